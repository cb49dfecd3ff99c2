import Testing

@testable import Authorization

@Suite("Client group queries")
struct QueryTests {
    let machine = ClientFacts(
        authenticationName: "Device-1", sessionName: "s1",
        attributes: [
            "area": .string("area1"), "role": .string("machine"), "floor": .int(3),
            "sensors": .strings(["motion", "humidity"]), "enabled": .bool(true),
        ])

    func matches(_ query: String, _ facts: ClientFacts? = nil) throws -> Bool {
        try ClientGroupQuery(parsing: query).matches(facts ?? machine)
    }

    func error(_ query: String) -> QueryError? {
        do {
            _ = try ClientGroupQuery(parsing: query)
            return nil
        } catch {
            return error
        }
    }

    @Test func comparesStringsAndIntegers() throws {
        #expect(try matches("attributes.area = 'area1'"))
        #expect(try !matches("attributes.area = 'Area1'"), "attribute strings compare exactly")
        #expect(try matches("attributes.area <> 'area2'"))
        #expect(try matches("attributes.area != \"area2\""))
        #expect(try matches("attributes.floor = 3"))
        #expect(try matches("attributes.floor <= 3") && matches("attributes.floor >= 3"))
        #expect(try matches("attributes.floor < 4") && matches("attributes.floor > 2"))
        #expect(try !matches("attributes.floor < 3") || matches("attributes.floor > 3"))
        #expect(try matches("attributes.floor > -1"))
    }

    @Test func aStringNeverEqualsAnInteger() throws {
        #expect(try !matches("attributes.floor = '3'"))
        #expect(try !matches("attributes.floor <> '3'"))
        #expect(try !matches("attributes.area = 1"))
        #expect(try !matches("attributes.area <> 1"))
    }

    @Test func booleansAreTheStringsTrueAndFalse() throws {
        #expect(try matches("attributes.enabled = 'true'"))
        #expect(try !matches("attributes.enabled = 'false'"))
    }

    @Test func authenticationNamesCompareCaseInsensitively() throws {
        #expect(try matches("authenticationName = 'device-1'"))
        #expect(try matches("AUTHENTICATIONNAME = 'DEVICE-1'"))
        #expect(try matches("authenticationName IN ['c1', 'device-1']"))
        #expect(try !matches("authenticationName <> 'DEVICE-1'"))
        #expect(try matches("authenticationName <> 'device-2'"))
    }

    @Test func inLists() throws {
        #expect(try matches("attributes.role IN ['machine', 'gateway']"))
        #expect(try matches("attributes.role in [\"gateway\",\"machine\"]"))
        #expect(try !matches("attributes.role IN ['gateway']"))
        #expect(try matches("attributes.floor IN [1, 2, 3]"))
        #expect(try !matches("attributes.floor IN ['3']"))
    }

    @Test func arraysMatchWhenAnyElementDoes() throws {
        #expect(try matches("attributes.sensors = 'motion'"))
        #expect(try matches("attributes.sensors = 'humidity'"))
        #expect(try !matches("attributes.sensors = 'temperature'"))
        #expect(try matches("attributes.sensors IN ['temperature', 'humidity']"))
        #expect(try !matches("attributes.sensors IN ['temperature']"))
        // `<>` is true when no element equals.
        #expect(try matches("attributes.sensors <> 'temperature'"))
        #expect(try !matches("attributes.sensors <> 'motion'"))
        let empty = ClientFacts(authenticationName: "x", sessionName: "x", attributes: ["sensors": .strings([])])
        #expect(try !matches("attributes.sensors = 'motion'", empty))
        #expect(try matches("attributes.sensors <> 'motion'", empty))
    }

    @Test func aMissingAttributeMatchesNothing() throws {
        for query in [
            "attributes.color = 'red'", "attributes.color <> 'red'", "attributes.color IN ['red']",
            "attributes.size < 5", "attributes.size >= 5", "attributes.size <> 5",
        ] {
            #expect(try !matches(query), "\(query)")
        }
        #expect(try matches("attributes.color = 'red' or attributes.area = 'area1'"))
    }

    @Test func andBindsTighterThanOr() throws {
        // true or (false and false) = true; (true or false) and false would be false.
        #expect(try matches("attributes.area = 'area1' or attributes.role = 'x' and attributes.floor = 9"))
        #expect(try !matches("(attributes.area = 'area1' or attributes.role = 'x') and attributes.floor = 9"))
        // false and true or true = true
        #expect(try matches("attributes.floor = 9 AND attributes.area = 'area1' Or attributes.role = 'machine'"))
        #expect(try !matches("attributes.floor = 9 and (attributes.area = 'area1' or attributes.role = 'machine')"))
        #expect(try matches("((attributes.floor = 3))"))
    }

    @Test func eventGridDocumentedQueries() throws {
        #expect(try matches("(attributes.sensors = 'motion' or attributes.sensors = 'humidity') or attributes.status <> 'sleep mode'"))
        #expect(try matches("attributes.sensors IN ['motion', 'humidity', 'temperature'] and attributes.floor <= 5"))
        #expect(try !matches("authenticationName IN ['client1', 'client2']"))
    }

    @Test func quotedStringsKeepSpacesAndTheOtherQuote() throws {
        let plain = ClientFacts(authenticationName: "a", sessionName: "a", attributes: ["status": .string("sleep mode")])
        #expect(try matches("attributes.status = 'sleep mode'", plain))
        let apostrophe = ClientFacts(authenticationName: "a", sessionName: "a", attributes: ["n": .string("o'neil")])
        #expect(try matches("attributes.n = \"o'neil\"", apostrophe))
    }

    @Test func errorsNameTheColumnAndWhatWasExpected() {
        let missingBracket = error("attributes.role IN ['a', 'b'")
        #expect(missingBracket == QueryError(column: 29, expected: "']' or ','", found: "end of query"))
        #expect(missingBracket?.description == "QueryError: column 29: expected ']' or ',', found end of query")
        #expect(error("attributes.area == 'a'")?.column == 18)
        #expect(error("attributes.area = 'a' and")?.column == 26)
        #expect(error("attributes.area = 'a' attributes.b = 'c'")?.column == 23)
        #expect(error("area = 'a'")?.column == 1)
        #expect(error("attributes. = 'a'")?.column == 1)
        #expect(error("attributes.area = 'a")?.expected == "a closing '")
        #expect(error("attributes.area = 'a")?.column == 19)
        #expect(error("attributes.floor < 'a'") == QueryError(column: 20, expected: "an integer after '<'", found: "'''"))
        #expect(error("(attributes.area = 'a'")?.expected == "')', 'and' or 'or'")
        #expect(error("attributes.area = abc")?.expected == "a quoted string or an integer")
        #expect(error("attributes.area IN 'a'")?.expected == "'['")
        #expect(error("attributes.area IN []")?.column == 21)
        #expect(error("")?.column == 1)
    }
}
