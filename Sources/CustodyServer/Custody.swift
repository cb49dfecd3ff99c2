@main struct Custody { static func main() {} }
