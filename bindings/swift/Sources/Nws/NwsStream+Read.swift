// Hand-written (scripts/gen-bindings.sh does not touch this file). Not compiled on the
// project's Linux machine (no Swift toolchain): see docs/MOBILE.md, "Verified here".

import Foundation

extension NwsStream {
    /// Waits for bytes from the backend and returns 1 to `maxBytes` of them (at most 1 MiB),
    /// or empty `Data` at the end of the stream (the backend closed its side).
    ///
    /// Cancel-safe, and it reacts to cancellation: a generated Swift `async` call runs on
    /// after its `Task` is cancelled (UniFFI's Swift code waits for the Rust future without a
    /// cancellation handler), so this one asks the library to end the wait
    /// (`interruptRead()`) and then throws `NwsError.Cancelled`. No byte is lost either way:
    /// `waitReadable()` keeps what it takes inside the stream, and `readNow(maxBytes:)` does
    /// not wait.
    public func read(maxBytes: UInt32) async throws -> Data {
        while true {
            let now = self.readNow(maxBytes: maxBytes)
            if !now.isEmpty { return now }
            let more = try await withTaskCancellationHandler {
                try await self.waitReadable()
            } onCancel: {
                self.interruptRead()
            }
            if !more { return self.readNow(maxBytes: maxBytes) }
        }
    }
}
