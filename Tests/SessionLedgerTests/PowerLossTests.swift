import CustodyTesting
import Foundation
import LMDBStorage
import SessionLedger
import Testing

/// A model of power loss for the ledger's deferred meta flush (MDB_NOMETASYNC): only what a
/// flush made durable survives. A preloaded shim wraps `fdatasync`/`fsync` of the ledger's
/// data file: before the real flush it copies the file (what will be on disk once the flush
/// returns, and until the next one) and says so on the child's output, where the child also
/// writes each answer it was given, in the one order the writer thread made them in. Power
/// lost at any moment after image N's flush and before the next flush leaves exactly image N,
/// so every answer printed before the next flush line must be in image N, and image N must
/// open and verify.
@Suite("Power loss")
struct PowerLossTests {
    static let shimSource = #"""
        #define _GNU_SOURCE
        #include <dlfcn.h>
        #include <fcntl.h>
        #include <stdio.h>
        #include <stdlib.h>
        #include <string.h>
        #include <sys/sendfile.h>
        #include <sys/stat.h>
        #include <unistd.h>

        static unsigned long flushes;

        static int ledger_data(int fd) {
            char link[64], path[4096];
            snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
            ssize_t n = readlink(link, path, sizeof path - 1);
            if (n < 9) return 0;
            path[n] = 0;
            return strcmp(path + n - 9, "/data.mdb") == 0;
        }

        static void say(const char *line) {
            size_t done = 0, size = strlen(line);
            while (done < size) {
                ssize_t n = write(1, line + done, size - done);
                if (n <= 0) return;
                done += (size_t)n;
            }
        }

        /* Copies the data file to IMAGES/image-N/data.mdb (every EVERY-th flush, at most 400
           times), then says so. */
        static void before_flush(int fd) {
            static unsigned long copies;
            const char *images = getenv("POWERLOSS_IMAGES");
            if (!images || !ledger_data(fd)) return;
            unsigned long n = ++flushes;
            const char *every_text = getenv("POWERLOSS_EVERY");
            unsigned long every = every_text ? strtoul(every_text, 0, 10) : 1;
            char line[96];
            if ((every > 1 && n % every != 0) || copies >= 400) {
                snprintf(line, sizeof line, "flush %lu\n", n);
                say(line);
                return;
            }
            char path[4096];
            snprintf(path, sizeof path, "%s/image-%lu", images, n);
            mkdir(path, 0755);
            strncat(path, "/data.mdb", sizeof path - strlen(path) - 1);
            int out = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
            struct stat st;
            if (out < 0 || fstat(fd, &st) != 0) abort();
            off_t offset = 0;
            while (offset < st.st_size) {
                if (sendfile(out, fd, &offset, (size_t)(st.st_size - offset)) <= 0) abort();
            }
            close(out);
            copies++;
            snprintf(line, sizeof line, "flush %lu image\n", n);
            say(line);
        }

        int fdatasync(int fd) {
            static int (*real)(int);
            if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
            before_flush(fd);
            return real(fd);
        }

        int fsync(int fd) {
            static int (*real)(int);
            if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
            before_flush(fd);
            return real(fd);
        }
        """#

    /// A new directory on a tmpfs where there is one: the child's nonstop flushes then cost
    /// nothing, and the images are copies in memory.
    static func workDirectory(_ label: String) -> String {
        let base = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()
        return base + "/\(label)-\(UUID().uuidString)"
    }

    /// Builds the shim with the toolchain's C compiler into `directory`.
    static func buildShim(in directory: String) throws -> String {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let source = directory + "/powerloss.c"
        let library = directory + "/powerloss.so"
        try shimSource.write(toFile: source, atomically: true, encoding: .utf8)
        let (status, _, errors) = try run("/usr/bin/env", ["clang", "-shared", "-fPIC", "-O1", "-o", library, source, "-ldl"])
        try #require(status == 0, "clang: \(errors)")
        return library
    }

    /// An image of the data file taken just before flush `flush`, and the answers given since
    /// the image before it until the next flush: all of them must be in it (the files only grow
    /// here, so the answers before were checked in the images before).
    struct Image {
        var flush: Int
        var answers: [[Substring]]
    }

    /// Runs `arguments` of custody-bench with the shim until killed at random; answers the
    /// images in flush order with their answers (output lines other than flush lines, split
    /// at spaces, for which `isAnswer` holds).
    static func images(
        _ arguments: [String], work: String, every: Int, isAnswer: ([Substring]) -> Bool
    ) throws -> (images: [Image], directory: String, flushes: Int, answers: Int) {
        let shim = try buildShim(in: work + "/shim")
        let images = work + "/images"
        try FileManager.default.createDirectory(atPath: images, withIntermediateDirectories: true)
        let output = work + "/child.out"
        _ = FileManager.default.createFile(atPath: output, contents: nil)
        var generator = SystemRandomNumberGenerator()
        try killedAtRandom(
            try builtProduct("custody-bench"), arguments,
            environment: ["LD_PRELOAD": shim, "POWERLOSS_IMAGES": images, "POWERLOSS_EVERY": "\(every)"],
            output: output, after: 150_000...300_000, using: &generator)
        var seen: [Image] = []
        var open: Image?
        var flushes = 0
        var answers = 0
        var sinceImage: [[Substring]] = []
        for line in try String(contentsOfFile: output, encoding: .utf8).split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.first == "flush", parts.count >= 2, let number = Int(parts[1]) {
                if var image = open {
                    image.answers = sinceImage
                    sinceImage = []
                    seen.append(image)
                }
                open = parts.count == 3 ? Image(flush: number, answers: []) : nil
                flushes += 1
            } else if isAnswer(parts) {
                sinceImage.append(parts)
                answers += 1
            }
        }
        return (seen, images, flushes, answers)
    }

    @Test func everyLedgerAnswerIsInTheImageOfTheFlushBeforeIt() async throws {
        try await offPool {
            let work = Self.workDirectory("custody-powerloss")
            defer { try? FileManager.default.removeItem(atPath: work) }
            let (images, directory, flushes, answers) = try Self.images(
                ["ledger-crash-child", "--data-dir", work + "/ledger", "--prefix", "p", "--window", "16"], work: work, every: 13
            ) { parts in parts.count == 3 && (parts[0] == "granted" || parts[0] == "released") && UInt64(parts[2]) != nil }
            #expect(answers > 0 && flushes > 0)
            try #require(images.count >= 3, "only \(images.count) images of \(flushes) flushes")
            // Recovery (a broker started from the image) on a few of them, the last among them.
            let recovered = Set(stride(from: images.count - 1, through: 0, by: -max(1, images.count / 4)))
            for (index, image) in images.enumerated() {
                let path = directory + "/image-\(image.flush)"
                let store = try LedgerStore(directory: path, options: LedgerStoreOptions(readOnly: true))
                try store.read { snapshot in
                    for answer in image.answers {
                        let record = try snapshot.record(at: UInt64(answer[2])!)
                        #expect(record?.event.sessionName.value == String(answer[1]),
                                "image \(image.flush): \(answer.joined(separator: " ")) was answered before the next flush and is not in it")
                    }
                    let report = try snapshot.verify()
                    #expect(report.isIntact, "image \(image.flush): \(String(describing: report.problem))")
                }
                store.close()
                // And a broker could start from it: recovery runs and the result verifies.
                guard recovered.contains(index) else { continue }
                let ledger = try LMDBSessionLedger(directory: path)
                #expect(try ledger.verify().isIntact)
                ledger.close()
            }
        }
    }

    /// The broker's store (QoS 1/2 messages and sessions) with its deferred meta flush
    /// (`BrokerStoreOptions.deferredMetaSync`, off in custody by default).
    @Test func everyStoredMessageIsInTheImageOfTheFlushBeforeIt() async throws {
        try await offPool {
            let work = Self.workDirectory("custody-powerloss-store")
            defer { try? FileManager.default.removeItem(atPath: work) }
            let (images, directory, flushes, answers) = try Self.images(
                ["store-crash-child", "--data-dir", work + "/store", "--window", "16"], work: work, every: 13
            ) { parts in parts.count == 2 && parts[0] == "stored" }
            #expect(answers > 0 && flushes > 0)
            try #require(images.count >= 3, "only \(images.count) images of \(flushes) flushes")
            for image in images {
                let store = try BrokerStore(directory: directory + "/image-\(image.flush)")
                var keys = Set<String>()
                try store.forEach(.messages) { key, _ in keys.insert(String(decoding: key, as: UTF8.self)) }
                store.close()
                for answer in image.answers {
                    let present = keys.contains(String(answer[1]))
                    #expect(present,
                            "image \(image.flush): \(answer[1]) was stored before the next flush and is not in it")
                }
            }
        }
    }
}
