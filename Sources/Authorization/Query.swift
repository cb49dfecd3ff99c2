/// A compiled client group query (Event Grid's `query` of a client group).
///
/// Comparison rules, chosen to be predictable rather than clever:
/// - A missing attribute makes every comparison on it false (`<>` included), so a group never
///   catches a client by what it lacks.
/// - A string never equals an integer: `attributes.floor = '5'` is false for `floor: 5`.
/// - `<`, `>`, `<=`, `>=` compare integers only (the parser refuses a string operand).
/// - An array attribute satisfies `=` and `IN` when ANY element does; it satisfies `<>` when NO
///   element equals the value (so `<>` is exactly the negation of `=` for a present attribute);
///   it never satisfies an ordering comparison.
/// - `authenticationName` compares case-insensitively, as everywhere in Custody; attribute
///   strings compare exactly.
public struct ClientGroupQuery: Sendable, Equatable, CustomStringConvertible {
    /// The query as written.
    public let text: String
    let root: QueryNode

    /// Compiles `text`; throws a ``QueryError`` naming the column and what was expected.
    public init(parsing text: String) throws(QueryError) {
        self.text = text
        var parser = QueryParser(text)
        self.root = try parser.parse()
    }

    /// Whether the client belongs to the group.
    public func matches(_ facts: ClientFacts) -> Bool { root.evaluate(facts) }

    public var description: String { text }
}

indirect enum QueryNode: Sendable, Equatable {
    case and(QueryNode, QueryNode)
    case or(QueryNode, QueryNode)
    case comparison(QueryColumn, QueryOperator, QueryLiteral)
    case member(QueryColumn, [QueryLiteral])

    func evaluate(_ facts: ClientFacts) -> Bool {
        switch self {
        case .and(let l, let r): return l.evaluate(facts) && r.evaluate(facts)
        case .or(let l, let r): return l.evaluate(facts) || r.evaluate(facts)
        case .comparison(let column, let op, let literal):
            guard let value = column.value(in: facts) else { return false }
            return compare(value, op, literal)
        case .member(let column, let literals):
            guard let value = column.value(in: facts) else { return false }
            return literals.contains { compare(value, .equal, $0) }
        }
    }

    private func compare(_ value: ColumnValue, _ op: QueryOperator, _ literal: QueryLiteral) -> Bool {
        switch (value, literal) {
        case (.scalar(.int(let v)), .int(let l)):
            switch op {
            case .equal: return v == l
            case .notEqual: return v != l
            case .less: return v < l
            case .greater: return v > l
            case .lessOrEqual: return v <= l
            case .greaterOrEqual: return v >= l
            }
        case (.scalar(.string(let v)), .string(let l)):
            switch op {
            case .equal: return v == l
            case .notEqual: return v != l
            default: return false
            }
        case (.caseless(let v), .string(let l)):
            switch op {
            case .equal: return v == l
            case .notEqual: return v != l
            default: return false
            }
        case (.scalar(.strings(let elements)), .string(let l)):
            switch op {
            case .equal: return elements.contains(l)
            case .notEqual: return !elements.contains(l)
            default: return false
            }
        default:
            // A string against an integer, whatever the operator.
            return false
        }
    }
}

enum ColumnValue {
    case scalar(AttributeValue)
    /// The authentication name, lower-cased like its literals (see `QueryParser.folded`).
    case caseless(String)
}

enum QueryColumn: Sendable, Equatable {
    case authenticationName
    case attribute(String)

    func value(in facts: ClientFacts) -> ColumnValue? {
        switch self {
        case .authenticationName: return .caseless(facts.authenticationName.lowercased())
        case .attribute(let key): return facts.attributes[key].map(ColumnValue.scalar)
        }
    }
}

enum QueryOperator: String, Sendable, Equatable {
    case equal = "="
    case notEqual = "<>"
    case less = "<"
    case greater = ">"
    case lessOrEqual = "<="
    case greaterOrEqual = ">="
}

enum QueryLiteral: Sendable, Equatable {
    case string(String)
    case int(Int)
}
