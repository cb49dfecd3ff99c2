import CustodyTesting
import Foundation
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `offPool` runs blocking code on a thread of its own, while the test stays the test:
/// what the body records is the calling test's.
@Suite("offPool")
struct OffPoolTests {
    @Test func theBodyRunsOnAnotherThreadOfTheSameTask() async throws {
        let caller = pthread_self()
        let (body, test) = try await offPool { () -> (pthread_t, String?) in
            (pthread_self(), Test.current?.name)
        }
        #expect(pthread_equal(caller, body) == 0)
        #expect(test == Test.current?.name)
    }
}
