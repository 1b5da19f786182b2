package org.nostrwebservices.nws

import java.io.ByteArrayOutputStream
import kotlin.random.Random
import kotlinx.coroutines.async
import kotlinx.coroutines.coroutineScope
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows

/** `openStream`: bytes to a backend without a proxy, here a TCP echo server behind an exit. */
class StreamTest {
    private val net = TestNetwork

    /** Writes [data] in chunks while reading the echo, concurrently; returns what came back. */
    private suspend fun echo(stream: NwsStream, data: ByteArray): ByteArray = coroutineScope {
        val writer = async {
            var off = 0
            while (off < data.size) {
                val n = minOf(10_000, data.size - off)
                stream.write(data.copyOfRange(off, off + n))
                off += n
            }
        }
        val got = ByteArrayOutputStream()
        while (got.size() < data.size) {
            val chunk = stream.read(65_536u)
            check(chunk.isNotEmpty()) { "end of stream after ${got.size()} bytes" }
            got.write(chunk)
        }
        writer.await()
        got.toByteArray()
    }

    @Test
    fun `openStream echoes bytes through the exit`(): Unit = runBlocking {
        val stream = openStream("${net.echoDomain}:7", emptyList())
        assertEquals("${net.echoDomain}:7", stream.destination())
        val data = Random(7).nextBytes(200_000)
        assertArrayEquals(data, echo(stream, data))

        stream.closeStream()
        stream.closeStream() // twice is fine
        assertThrows<NwsException.Stopped> { stream.read(16u) }
        assertThrows<NwsException.Stopped> { stream.write(byteArrayOf(1)) }
        stream.close() // frees the native object
    }

    @Test
    fun `a running proxy opens streams on its relays and counts them`(): Unit = runBlocking {
        NwsProxy(ProxyConfig(relays = listOf(net.relayUrl))).use { proxy ->
            proxy.start()
            proxy.openStream("${net.echoDomain}:7").use { stream ->
                val data = "hello over nostr".toByteArray()
                assertArrayEquals(data, echo(stream, data))
                assertEquals(1u, proxy.status().streamsOpen)
                stream.closeStream()
            }
            proxy.stop()
            assertThrows<NwsException.Stopped> { proxy.openStream("${net.echoDomain}:7") }
        }
    }
}
