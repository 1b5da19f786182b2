// Hand-written (scripts/gen-bindings.sh does not touch this file).
package org.nostrwebservices.nws

/**
 * Waits for bytes from the backend and returns 1 to [maxBytes] of them (at most 1 MiB), or an
 * empty array at the end of the stream (the backend closed its side).
 *
 * Cancel-safe: a read cancelled at any moment (`withTimeout`, a cancelled scope) loses no byte;
 * the next read returns them. It is built from [NwsStream.waitReadable], which keeps what it
 * takes inside the stream before it returns, and the non-suspending [NwsStream.readNow], so no
 * byte is ever in a result that a cancelled coroutine drops. (A generated `suspend` call whose
 * coroutine is cancelled just as the call completes drops the result; that is why `read` is not
 * a generated call.)
 *
 * @throws NwsException.ExitRefused if the exit aborted the stream (with its reason)
 * @throws NwsException.Stopped after `closeStream()`
 * @throws NwsException.Cancelled after [NwsStream.interruptRead]
 */
suspend fun NwsStream.read(maxBytes: UInt): ByteArray {
    while (true) {
        val now = readNow(maxBytes)
        if (now.isNotEmpty()) return now
        if (!waitReadable()) return readNow(maxBytes)
    }
}
