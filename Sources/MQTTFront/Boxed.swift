/// A value kept out of line: fields most connections never set cost one pointer.
final class Boxed<Value>: @unchecked Sendable {
    let value: Value

    init(_ value: Value) {
        self.value = value
    }
}
