package org.nostrwebservices.nws

import java.io.ByteArrayOutputStream
import kotlin.random.Random
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.TimeoutCancellationException
import kotlinx.coroutines.async
import kotlinx.coroutines.delay
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import kotlinx.coroutines.withTimeoutOrNull
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows

/**
 * Cancelled calls lose nothing and leave nothing running; errors read as sentences; credentials
 * never appear in strings.
 */
class CancellationTest {
    private val net = TestNetwork

    /** Waits (at most 10 s) until [done] holds; returns whether it did. */
    private suspend fun eventually(done: () -> Boolean): Boolean {
        repeat(200) {
            if (done()) return true
            delay(50)
        }
        return done()
    }

    @Test
    fun `a read cancelled by withTimeout loses no byte`(): Unit = runBlocking {
        openStream("${net.echoDomain}:7", emptyList()).use { stream ->
            // Nothing was sent yet: the read waits, and withTimeout cancels it.
            assertThrows<TimeoutCancellationException> { withTimeout(300) { stream.read(1024u) } }
            // Bytes that arrive now go to the next read.
            val first = "after a cancelled read".toByteArray()
            stream.write(first)
            val got = ByteArrayOutputStream()
            while (got.size() < first.size) got.write(stream.read(1024u))
            assertArrayEquals(first, got.toByteArray())

            // Again and again: a read cancelled while it waits, then bytes, then a read. (A read
            // that completes at the very moment its timeout fires can still have its result
            // dropped by withTimeout itself, as kotlinx documents for any block; what is
            // asserted here is that a cancelled wait takes nothing.)
            val data = Random(3).nextBytes(40_000)
            val all = ByteArrayOutputStream()
            for (round in 0 until 40) {
                assertNull(withTimeoutOrNull(20) { stream.read(4096u) }, "round $round: nothing was sent")
                val part = data.copyOfRange(round * 1000, (round + 1) * 1000)
                stream.write(part)
                val got = ByteArrayOutputStream()
                while (got.size() < part.size) got.write(stream.read(4096u))
                all.write(got.toByteArray())
            }
            assertArrayEquals(data, all.toByteArray())
            stream.closeStream()
        }
        assertTrue(eventually { activeCallCount() == 0u }, "calls left running: ${activeCallCount()}")
    }

    @Test
    fun `interruptRead ends a waiting read without taking bytes`(): Unit = runBlocking {
        openStream("${net.echoDomain}:7", emptyList()).use { stream ->
            val pending = async(Dispatchers.IO) { runCatching { stream.read(1024u) } }
            delay(200)
            stream.interruptRead()
            val result = pending.await()
            assertTrue(result.exceptionOrNull() is NwsException.Cancelled, "$result")
            // An interrupt with no read waiting ends the next read at once.
            stream.interruptRead()
            assertThrows<NwsException.Cancelled> { stream.read(1024u) }
            stream.write("still here".toByteArray())
            val got = ByteArrayOutputStream()
            while (got.size() < 10) got.write(stream.read(1024u))
            assertEquals("still here", got.toString())
            stream.closeStream()
        }
    }

    @Test
    fun `a cancelled start or restart leaves the proxy stopped`(): Unit = runBlocking {
        // A start cancelled while it runs is undone. One whose call completed at the instant the
        // timeout fired is not: withTimeoutOrNull then drops a result that did arrive (kotlinx
        // documents this for any block), and the proxy runs, as it would after a normal start.
        // So: every outcome is one of the two, no call is left running, and some of the cancels
        // (at 1-6 ms, while the restart closes and binds) must have ended stopped.
        var stopped = 0
        val delays = List(30) { 1L + it % 3 }
        for (after in delays) {
            NwsProxy(ProxyConfig(relays = listOf(net.relayUrl))).use { proxy ->
                // A restart of a running proxy: it stops first (relay connections close),
                // so the cancel lands while it runs far more often than in a fresh start.
                proxy.start()
                val info = withTimeoutOrNull(after) { proxy.restart() }
                assertTrue(
                    eventually {
                        activeCallCount() == 0u &&
                            proxy.state() in setOf(ProxyState.STOPPED, ProxyState.RUNNING)
                    },
                    "after $after ms: ${proxy.state()}, ${activeCallCount()} calls running",
                )
                if (info == null && proxy.state() == ProxyState.STOPPED) {
                    stopped++
                    assertNull(proxy.info())
                }
                if (info != null) assertEquals(ProxyState.RUNNING, proxy.state())
                // It starts (again) normally afterwards.
                assertTrue(proxy.start().socksPort != null)
                assertEquals(ProxyState.RUNNING, proxy.state())
                proxy.stop()
            }
        }
        System.err.println("cancelled restarts that ended stopped: $stopped of ${delays.size}")
        assertTrue(stopped > 0, "no cancelled restart ended stopped")
    }

    @Test
    fun `exception messages are the sentence, not a field dump`(): Unit = runBlocking {
        val e = assertThrows<NwsException.NotNwsName> { openStream("example.com:80", emptyList()) }
        assertEquals(e.detail, e.message)
        assertTrue(e.message.startsWith("`example.com` is not an NWS name"), e.message)
        assertFalse(e.message.contains("host="), e.message)
        assertEquals(e.detail, e.toString())

        val bad = assertThrows<NwsException.BadName> { openStream("abc.nostr:80", emptyList()) }
        assertEquals(bad.detail, bad.message)
        assertFalse(bad.message.contains("name="), bad.message)
    }

    @Test
    fun `credentials never appear in toString`(): Unit = runBlocking {
        val creds = ProxyCredentials(username = "alice", password = "s3cret-pw")
        assertFalse(creds.toString().contains("s3cret-pw"), creds.toString())
        assertTrue(creds.toString().contains("alice"), creds.toString())

        NwsProxy(ProxyConfig(relays = listOf(net.relayUrl))).use { proxy ->
            val info = proxy.start()
            val password = info.credentials!!.password
            assertFalse(info.toString().contains(password), info.toString())
            assertFalse(proxy.status().toString().contains(password))
            proxy.stop()
        }
    }
}
