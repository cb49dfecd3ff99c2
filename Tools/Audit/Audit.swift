@main struct Audit { static func main() {} }
