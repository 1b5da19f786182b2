package org.nostrwebservices.nws

import com.sun.jna.Library
import com.sun.jna.Native
import com.sun.jna.ptr.IntByReference
import java.io.File
import java.net.ServerSocket
import java.nio.file.Files
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import okhttp3.OkHttpClient
import okhttp3.Request
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows

/** The C library, for destroying a listening socket as the OS does (see [destroyListener]). */
interface HealthTestLibC : Library {
    fun getsockname(fd: Int, addr: ByteArray, len: IntByReference): Int
    fun getsockopt(fd: Int, level: Int, name: Int, value: IntByReference, len: IntByReference): Int
    fun shutdown(fd: Int, how: Int): Int
}

/**
 * Health and lifecycle: listener events for relays and streams, `awaitReady`, `networkChanged`,
 * `appResumed`, the automatic rebind after the OS destroyed the listening sockets, the
 * [NwsProxyMonitor] flows, and the WebView listener.
 */
class HealthTest {
    private val net = TestNetwork
    private val dir: File = Files.createTempDirectory("nws-health-test").toFile()

    /** Listener calls, in order. */
    private class Recorder : ProxyListener {
        val states = LinkedBlockingQueue<ProxyState>()
        val events = LinkedBlockingQueue<ProxyEvent>()
        val logs = LinkedBlockingQueue<String>()
        override fun onStateChanged(state: ProxyState) = states.put(state)
        override fun onEvent(event: ProxyEvent) = events.put(event)
        override fun onLog(level: LogLevel, target: String, message: String) = logs.put(message)

        /** The first event (skipping others) that [matches], within [seconds]. */
        fun <T : ProxyEvent> next(seconds: Long, what: String, matches: (ProxyEvent) -> T?): T {
            val deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(seconds)
            while (true) {
                val left = deadline - System.nanoTime()
                val e = events.poll(maxOf(left, 0), TimeUnit.NANOSECONDS)
                    ?: error("no $what within $seconds s")
                matches(e)?.let { return it }
            }
        }
    }

    private fun relay(port: Int = 0): NwsProcess =
        NwsProcess("relay-health-$port", listOf("relay", "--listen", "127.0.0.1:$port"), dir)

    private fun client(info: ProxyInfo, port: Int, creds: ProxyCredentials?): OkHttpClient =
        okHttpThroughHttpProxy(info.host, port, creds)

    private fun OkHttpClient.get(url: String): Pair<Int, ByteArray> =
        newCall(Request.Builder().url(url).build()).execute().use { it.code to it.body!!.bytes() }

    @Test
    fun `relay events follow the relay down and up, and networkChanged reconnects at once`(): Unit =
        runBlocking {
            var relay = relay()
            val url = relay.field("relay")
            val port = url.substringAfterLast(':').trimEnd('/').toInt()
            val rec = Recorder()
            NwsProxy(ProxyConfig(relays = listOf(url))).use { proxy ->
                proxy.setListener(rec)
                assertThrows<NwsException.Stopped> { proxy.awaitReady(100uL) }
                proxy.start()
                assertEquals(1u, proxy.awaitReady(10_000uL))
                val up = rec.next(10, "RelayConnected") { it as? ProxyEvent.RelayConnected }
                assertEquals(1u, up.connected)
                assertEquals(1u, up.known)
                assertTrue(url.trimEnd('/') == up.url.trimEnd('/'), "${up.url} vs $url")

                setLogLevel(LogLevel.DEBUG)
                try {
                    relay.close()
                    val down = rec.next(15, "RelayDisconnected") { it as? ProxyEvent.RelayDisconnected }
                    assertEquals(0u, down.connected)
                    assertEquals(1u, down.known)
                    assertEquals(up.url, down.url)

                    // Let the reconnection backoff grow past 5 s (0.5, 1, 2, 4, 8 s, +/-20 %).
                    val wait = Regex("""reconnecting in ([0-9.]+)(ms|s)""")
                    val deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30)
                    var seconds = 0.0
                    while (seconds < 5.0) {
                        val left = deadline - System.nanoTime()
                        val line = rec.logs.poll(maxOf(left, 0), TimeUnit.NANOSECONDS)
                            ?: error("the backoff never reached 5 s")
                        val m = wait.find(line) ?: continue
                        seconds = m.groupValues[1].toDouble() / (if (m.groupValues[2] == "ms") 1000 else 1)
                    }
                    relay = relay(port)
                    // Not before the backoff runs out...
                    assertThrows<NwsException.Timeout> { proxy.awaitReady(1_000uL) }
                    // ...but at once when the app says the network changed.
                    proxy.networkChanged()
                    assertEquals(1u, proxy.awaitReady(4_000uL))
                    val back = rec.next(5, "RelayConnected again") { it as? ProxyEvent.RelayConnected }
                    assertEquals(1u, back.connected)
                } finally {
                    setLogLevel(LogLevel.INFO)
                    relay.close()
                }
                proxy.stop()
            }
        }

    @Test
    fun `awaitReady times out while no relay can be reached`(): Unit = runBlocking {
        val free = ServerSocket(0).use { it.localPort }
        NwsProxy(ProxyConfig(relays = listOf("ws://127.0.0.1:$free"))).use { proxy ->
            proxy.start()
            val e = assertThrows<NwsException.Timeout> { proxy.awaitReady(300uL) }
            assertEquals(300uL, e.timeoutMs)
            assertEquals("no relay connected within 300 ms", e.message)
            proxy.stop()
        }
    }

    @Test
    fun `streams opened and closed reach the listener and the monitor's health`(): Unit = runBlocking {
        val rec = Recorder()
        NwsProxy(ProxyConfig(relays = listOf(net.relayUrl))).use { proxy ->
            proxy.setListener(rec)
            val info = proxy.start()
            proxy.awaitReady(10_000uL)
            val http = client(info, info.httpPort!!.toInt(), info.credentials)
            assertArrayEquals(TestNetwork.PAGE, http.get("http://${net.httpDomain}/").second)
            // OkHttp keeps the connection (and so the stream) for the next request: close it.
            http.connectionPool.evictAll()
            val opened = rec.next(10, "StreamsChanged with a stream") {
                (it as? ProxyEvent.StreamsChanged)?.takeIf { e -> e.total >= 1uL }
            }
            assertEquals(1uL, opened.total)
            // Opened and closed within 100 ms come as one event.
            val closed = if (opened.open == 0u) opened else rec.next(10, "StreamsChanged with none open") {
                (it as? ProxyEvent.StreamsChanged)?.takeIf { e -> e.open == 0u }
            }
            assertEquals(1uL, closed.total)

            // The same through the Flow layer (which replaces the listener).
            proxy.monitor().use { monitor ->
                val h = withTimeout(10_000) { monitor.health.first { it.state == ProxyState.RUNNING } }
                assertEquals(ProxyState.RUNNING, h.state)
                client(info, info.httpPort!!.toInt(), info.credentials).get("http://${net.httpDomain}/")
                val after = withTimeout(10_000) { monitor.health.first { it.streamsTotal >= 2uL } }
                assertEquals(2uL, after.streamsTotal)
                proxy.restart()
                // A new run: counts start again, and the relay comes back.
                val ready = withTimeout(10_000) { monitor.health.first { it.ready } }
                assertEquals(0uL, ready.streamsTotal)
                assertEquals(1u, ready.relaysConnected)
                proxy.stop()
                assertEquals(ProxyState.STOPPED, withTimeout(10_000) { monitor.state.first { it == ProxyState.STOPPED } })
            }
        }
    }

    @Test
    fun `listeners destroyed by the system are rebound on the same ports at once`(): Unit = runBlocking {
        val rec = Recorder()
        NwsProxy(ProxyConfig(relays = listOf(net.relayUrl), webview = true)).use { proxy ->
            proxy.setListener(rec)
            val info = proxy.start()
            while (rec.states.poll(5, TimeUnit.SECONDS) != ProxyState.RUNNING) {
                // STARTING, then RUNNING: delivered on the listener thread.
            }
            assertEquals(1, destroyListener(info.socksPort!!.toInt()), "one listening socket destroyed")

            rec.next(10, "ListenersLost") { it as? ProxyEvent.ListenersLost }
            val rebound = rec.next(10, "Rebound") { it as? ProxyEvent.Rebound }
            assertEquals(info, rebound.info, "same ports, same credentials")
            assertEquals(info, proxy.info())
            val seen = List(3) { rec.states.poll(5, TimeUnit.SECONDS) }
            assertEquals(listOf(ProxyState.STOPPING, ProxyState.STARTING, ProxyState.RUNNING), seen)

            // Clients configured before keep working, through every listener.
            val (code, body) = client(info, info.httpPort!!.toInt(), info.credentials).get("http://${net.httpDomain}/")
            assertEquals(200, code)
            assertArrayEquals(TestNetwork.PAGE, body)
            assertArrayEquals(
                TestNetwork.PAGE,
                client(info, info.webviewPort!!.toInt(), null).get("http://${net.httpDomain}/").second,
            )
            java.net.Socket(info.host, info.socksPort!!.toInt()).close()

            // appResumed() on a healthy proxy changes nothing.
            assertEquals(info, proxy.appResumed())
            proxy.stop()
            assertNull(proxy.appResumed(), "a proxy stopped by stop() stays stopped")
        }
    }

    @Test
    fun `a start that fails says why`(): Unit = runBlocking {
        ServerSocket(0, 1, java.net.InetAddress.getLoopbackAddress()).use { taken ->
            val rec = Recorder()
            NwsProxy(ProxyConfig(relays = listOf(net.relayUrl), httpPort = taken.localPort.toUShort())).use { proxy ->
                proxy.setListener(rec)
                val e = assertThrows<NwsException.Io> { proxy.start() }
                val failed = rec.next(5, "StartFailed") { it as? ProxyEvent.StartFailed }
                assertTrue(failed.reason.contains(":${taken.localPort}"), failed.reason)
                assertEquals(e.message, failed.reason)
                assertEquals(ProxyState.STOPPED, proxy.state())
            }
        }
    }

    @Test
    fun `the WebView listener needs no credentials and serves only NWS names`(): Unit = runBlocking {
        NwsProxy(ProxyConfig(relays = listOf(net.relayUrl), webview = true)).use { proxy ->
            val info = proxy.start()
            val webview = client(info, info.webviewPort!!.toInt(), null)
            val (code, body) = webview.get("http://${net.httpDomain}/")
            assertEquals(200, code)
            assertArrayEquals(TestNetwork.PAGE, body)
            assertArrayEquals(TestNetwork.BIG, webview.get("http://${net.httpNpub}/big").second)

            val (refused, text) = webview.get("http://example.org/")
            assertEquals(403, refused)
            assertTrue(String(text).contains("not an NWS name"), String(text))

            // The other listeners still ask for credentials.
            assertEquals(407, client(info, info.httpPort!!.toInt(), null).get("http://${net.httpDomain}/").first)
            proxy.stop()
        }
    }

    companion object {
        private val libc: HealthTestLibC by lazy { Native.load("c", HealthTestLibC::class.java) }
        private const val SOL_SOCKET = 1
        private const val SO_ACCEPTCONN = 30
        private const val AF_INET = 2
        private const val SHUT_RDWR = 2

        /**
         * Shuts down this process's listening TCP sockets on [port] (from outside the library,
         * as iOS invalidates a suspended app's sockets: they stay open but accept nothing).
         * Returns how many.
         */
        fun destroyListener(port: Int): Int {
            var n = 0
            for (entry in File("/proc/self/fd").listFiles().orEmpty()) {
                val fd = entry.name.toIntOrNull() ?: continue
                val listening = IntByReference()
                if (libc.getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, listening, IntByReference(4)) != 0) continue
                if (listening.value != 1) continue
                val addr = ByteArray(128)
                if (libc.getsockname(fd, addr, IntByReference(addr.size)) != 0) continue
                val family = (addr[0].toInt() and 0xff) or ((addr[1].toInt() and 0xff) shl 8)
                val boundPort = ((addr[2].toInt() and 0xff) shl 8) or (addr[3].toInt() and 0xff)
                if (family == AF_INET && boundPort == port && libc.shutdown(fd, SHUT_RDWR) == 0) n++
            }
            return n
        }
    }
}
