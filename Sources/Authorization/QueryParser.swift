/// A query that does not compile: where (1-based column, in characters) and what was expected.
public struct QueryError: Error, Sendable, Equatable, CustomStringConvertible {
    public let column: Int
    /// What the parser wanted there, e.g. `']' or ','`.
    public let expected: String
    /// What it found instead, e.g. `end of query` or `'and'`.
    public let found: String

    public var description: String { "QueryError: column \(column): expected \(expected), found \(found)" }
}

/// Recursive descent over Event Grid's query grammar:
///
///     query      := or EOF
///     or         := and ('or' and)*
///     and        := primary ('and' primary)*
///     primary    := '(' or ')' | column op literal | column 'in' '[' literal (',' literal)* ']'
///     column     := 'authenticationName' | 'attributes.' KEY
///     op         := '=' | '<>' | '!=' | '<' | '>' | '<=' | '>='
///
/// Keywords and the column prefixes are case-insensitive; attribute keys are exact.
struct QueryParser {
    private let characters: [Character]
    private var position = 0

    init(_ text: String) { characters = Array(text) }

    mutating func parse() throws(QueryError) -> QueryNode {
        let node = try parseOr()
        skipSpace()
        if position < characters.count { throw error(expected: "'and', 'or' or end of query") }
        return node
    }

    private mutating func parseOr() throws(QueryError) -> QueryNode {
        var node = try parseAnd()
        while try keyword("or") { node = .or(node, try parseAnd()) }
        return node
    }

    private mutating func parseAnd() throws(QueryError) -> QueryNode {
        var node = try parsePrimary()
        while try keyword("and") { node = .and(node, try parsePrimary()) }
        return node
    }

    private mutating func parsePrimary() throws(QueryError) -> QueryNode {
        skipSpace()
        if peek == "(" {
            position += 1
            let node = try parseOr()
            skipSpace()
            guard peek == ")" else { throw error(expected: "')', 'and' or 'or'") }
            position += 1
            return node
        }
        let column = try parseColumn()
        skipSpace()
        if try keyword("in") {
            skipSpace()
            guard peek == "[" else { throw error(expected: "'['") }
            position += 1
            var literals = [try parseLiteral()]
            while true {
                skipSpace()
                if peek == "," {
                    position += 1
                    literals.append(try parseLiteral())
                } else if peek == "]" {
                    position += 1
                    return .member(column, literals.map { Self.folded($0, for: column) })
                } else {
                    throw error(expected: "']' or ','")
                }
            }
        }
        let op = try parseOperator()
        skipSpace()
        let literalColumn = position
        let literal = try parseLiteral()
        if op != .equal && op != .notEqual, case .string = literal {
            throw QueryError(column: literalColumn + 1, expected: "an integer after '\(op.rawValue)'", found: describe(at: literalColumn))
        }
        return .comparison(column, op, Self.folded(literal, for: column))
    }

    /// Authentication names compare case-insensitively: their literals are lower-cased once
    /// here rather than at every CONNECT.
    private static func folded(_ literal: QueryLiteral, for column: QueryColumn) -> QueryLiteral {
        if column == .authenticationName, case .string(let text) = literal { return .string(text.lowercased()) }
        return literal
    }

    private mutating func parseColumn() throws(QueryError) -> QueryColumn {
        skipSpace()
        let start = position
        while let c = peek, c.isLetter || c.isNumber || c == "." || c == "_" || c == "-" { position += 1 }
        let word = String(characters[start..<position])
        if word.lowercased() == "authenticationname" { return .authenticationName }
        let prefix = "attributes."
        if word.lowercased().hasPrefix(prefix), word.count > prefix.count {
            return .attribute(String(word.dropFirst(prefix.count)))
        }
        position = start
        throw error(expected: "'authenticationName' or 'attributes.KEY'")
    }

    private mutating func parseOperator() throws(QueryError) -> QueryOperator {
        skipSpace()
        let two = position + 1 < characters.count ? String(characters[position...position + 1]) : ""
        switch two {
        case "<>", "!=": position += 2; return .notEqual
        case "<=": position += 2; return .lessOrEqual
        case ">=": position += 2; return .greaterOrEqual
        default: break
        }
        switch peek {
        case "=": position += 1; return .equal
        case "<": position += 1; return .less
        case ">": position += 1; return .greater
        default: throw error(expected: "a comparison ('=', '<>', '!=', '<', '>', '<=', '>=') or 'IN'")
        }
    }

    private mutating func parseLiteral() throws(QueryError) -> QueryLiteral {
        skipSpace()
        let start = position
        if let quote = peek, quote == "'" || quote == "\"" {
            position += 1
            var value = ""
            while let c = peek, c != quote {
                value.append(c)
                position += 1
            }
            guard peek == quote else {
                throw QueryError(column: start + 1, expected: "a closing \(quote)", found: "end of query")
            }
            position += 1
            return .string(value)
        }
        var digits = ""
        if peek == "-" {
            digits.append("-")
            position += 1
        }
        while let c = peek, c.isASCII, c.isNumber {
            digits.append(c)
            position += 1
        }
        if let value = Int(digits), !(peek.map { $0.isLetter || $0 == "_" } ?? false) { return .int(value) }
        position = start
        throw error(expected: "a quoted string or an integer")
    }

    /// Consumes `word` when it is the next token, case-insensitively and as a whole word.
    private mutating func keyword(_ word: String) throws(QueryError) -> Bool {
        skipSpace()
        var end = position
        while end < characters.count, characters[end].isLetter { end += 1 }
        guard end > position, String(characters[position..<end]).lowercased() == word else { return false }
        position = end
        return true
    }

    private mutating func skipSpace() {
        while let c = peek, c.isWhitespace { position += 1 }
    }

    private var peek: Character? { position < characters.count ? characters[position] : nil }

    private func error(expected: String) -> QueryError {
        QueryError(column: position + 1, expected: expected, found: describe(at: position))
    }

    private func describe(at index: Int) -> String {
        guard index < characters.count else { return "end of query" }
        var end = index
        if characters[end].isLetter || characters[end].isNumber {
            while end < characters.count, characters[end].isLetter || characters[end].isNumber || characters[end] == "." { end += 1 }
        } else {
            end += 1
        }
        return "'\(String(characters[index..<end]))'"
    }
}
