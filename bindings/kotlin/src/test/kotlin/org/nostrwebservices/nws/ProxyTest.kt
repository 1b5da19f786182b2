package org.nostrwebservices.nws

import java.io.IOException
import java.net.Authenticator
import java.net.ConnectException
import java.net.InetSocketAddress
import java.net.PasswordAuthentication
import java.net.Proxy
import java.net.ProxySelector
import java.net.Socket
import java.net.URI
import java.net.UnknownHostException
import java.net.http.HttpClient
import java.net.http.HttpRequest
import java.net.http.HttpResponse
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit
import kotlinx.coroutines.runBlocking
import okhttp3.Dns
import okhttp3.OkHttpClient
import okhttp3.Request
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNotEquals
import org.junit.jupiter.api.Assertions.assertNotNull
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows

/** The in-app proxy, used by real HTTP clients against the relay, exits and backends of [TestNetwork]. */
class ProxyTest {
    private val net = TestNetwork

    private fun proxy(config: ProxyConfig = ProxyConfig(relays = listOf(net.relayUrl))) = NwsProxy(config)

    /** OkHttp through the HTTP proxy, answering its 407 with [creds]. */
    private fun okHttpViaHttpProxy(info: ProxyInfo, creds: ProxyCredentials?): OkHttpClient =
        okHttpThroughHttpProxy(info.host, info.httpPort!!.toInt(), creds)

    private fun OkHttpClient.get(url: String): Pair<Int, ByteArray> =
        newCall(Request.Builder().url(url).build()).execute().use { it.code to it.body!!.bytes() }

    @Test
    fun `OkHttp fetches the page through the HTTP proxy with credentials`(): Unit = runBlocking {
        proxy().use { proxy ->
            val info = proxy.start()
            assertEquals("127.0.0.1", info.host)
            val client = okHttpViaHttpProxy(info, info.credentials!!)

            val (code, body) = client.get("http://${net.httpDomain}/")
            assertEquals(200, code)
            assertArrayEquals(TestNetwork.PAGE, body)

            val (bigCode, big) = client.get("http://${net.httpDomain}/big")
            assertEquals(200, bigCode)
            assertArrayEquals(TestNetwork.BIG, big)

            // An npub host uses the configured relays. (An nprofile is longer than the 63
            // characters of a DNS label, so OkHttp rejects it in a URL.)
            assertArrayEquals(TestNetwork.PAGE, client.get("http://${net.httpNpub}/").second)
            proxy.stop()
        }
    }

    @Test
    fun `the HTTP proxy refuses missing and wrong credentials with 407`(): Unit = runBlocking {
        proxy().use { proxy ->
            val info = proxy.start()
            val none = okHttpViaHttpProxy(info, null).get("http://${net.httpDomain}/")
            assertEquals(407, none.first)
            val wrong = okHttpViaHttpProxy(info, ProxyCredentials(info.credentials!!.username, "wrong"))
                .get("http://${net.httpDomain}/")
            assertEquals(407, wrong.first)
            proxy.stop()
        }
    }

    @Test
    fun `OkHttp fetches the page through SOCKS5 without resolving the name locally`(): Unit = runBlocking {
        proxy().use { proxy ->
            val info = proxy.start()
            val creds = info.credentials!!
            // The JDK's SOCKS client (which OkHttp uses) takes SOCKS5 credentials from the
            // default Authenticator, asked with protocol "SOCKS5".
            Authenticator.setDefault(object : Authenticator() {
                override fun getPasswordAuthentication(): PasswordAuthentication? =
                    if (requestingProtocol == "SOCKS5") {
                        PasswordAuthentication(creds.username, creds.password.toCharArray())
                    } else {
                        null
                    }
            })
            try {
                val client = OkHttpClient.Builder()
                    .proxy(Proxy(Proxy.Type.SOCKS, InetSocketAddress(info.host, info.socksPort!!.toInt())))
                    // OkHttp hands SOCKS proxies the host name unresolved; this proves it.
                    .dns(object : Dns {
                        override fun lookup(hostname: String) =
                            throw UnknownHostException("no local DNS lookup expected: $hostname")
                    })
                    .build()
                val (code, body) = client.get("http://${net.httpDomain}/")
                assertEquals(200, code)
                assertArrayEquals(TestNetwork.PAGE, body)
                assertArrayEquals(TestNetwork.BIG, client.get("http://${net.httpDomain}/big").second)
            } finally {
                Authenticator.setDefault(null)
            }
            // Without credentials the SOCKS5 handshake fails.
            val anonymous = OkHttpClient.Builder()
                .proxy(Proxy(Proxy.Type.SOCKS, InetSocketAddress(info.host, info.socksPort!!.toInt())))
                .build()
            assertThrows<IOException> { anonymous.get("http://${net.httpDomain}/") }
            proxy.stop()
        }
    }

    @Test
    fun `java net http HttpClient fetches the page through the HTTP proxy`(): Unit = runBlocking {
        proxy().use { proxy ->
            val info = proxy.start()
            val creds = info.credentials!!
            val client = HttpClient.newBuilder()
                // HTTP/1.1: the default HTTP/2 attempt would send an h2c upgrade.
                .version(HttpClient.Version.HTTP_1_1)
                .proxy(ProxySelector.of(InetSocketAddress(info.host, info.httpPort!!.toInt())))
                .authenticator(object : Authenticator() {
                    override fun getPasswordAuthentication(): PasswordAuthentication? =
                        if (requestorType == RequestorType.PROXY) {
                            PasswordAuthentication(creds.username, creds.password.toCharArray())
                        } else {
                            null
                        }
                })
                .build()
            val response = client.send(
                HttpRequest.newBuilder(URI("http://${net.httpDomain}/big")).build(),
                HttpResponse.BodyHandlers.ofByteArray(),
            )
            assertEquals(200, response.statusCode())
            assertArrayEquals(TestNetwork.BIG, response.body())
            proxy.stop()
        }
    }

    @Test
    fun `stop and start again come back on the same ports with new credentials`(): Unit = runBlocking {
        proxy().use { proxy ->
            val first = proxy.start()
            assertEquals(first, proxy.start(), "start() on a running proxy changes nothing")
            proxy.stop()
            assertEquals(ProxyState.STOPPED, proxy.state())
            assertNull(proxy.info())
            assertThrows<ConnectException> { Socket(first.host, first.httpPort!!.toInt()).close() }

            val second = proxy.start()
            assertEquals(first.socksPort, second.socksPort)
            assertEquals(first.httpPort, second.httpPort)
            assertNotEquals(first.credentials, second.credentials)
            assertArrayEquals(
                TestNetwork.PAGE,
                okHttpViaHttpProxy(second, second.credentials).get("http://${net.httpDomain}/").second,
            )

            // restart() keeps ports and credentials, so configured clients keep working.
            val third = proxy.restart()
            assertEquals(second, third)
            assertEquals(third, proxy.info())
            assertArrayEquals(
                TestNetwork.PAGE,
                okHttpViaHttpProxy(third, third.credentials).get("http://${net.httpDomain}/").second,
            )
            proxy.stop()
        }
    }

    @Test
    fun `status counts relays, streams and bytes`(): Unit = runBlocking {
        proxy().use { proxy ->
            assertEquals(ProxyState.STOPPED, proxy.status().state)
            val info = proxy.start()
            okHttpViaHttpProxy(info, info.credentials).get("http://${net.httpDomain}/big")
            // The byte counters are added after each write to the client: the client may hold
            // the whole body a moment before they show it.
            var status = proxy.status()
            val deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(5)
            while (status.bytesReceived < TestNetwork.BIG.size.toULong() && System.nanoTime() < deadline) {
                kotlinx.coroutines.delay(20)
                status = proxy.status()
            }
            assertEquals(ProxyState.RUNNING, status.state)
            assertTrue(status.relaysConnected >= 1u, "$status")
            assertTrue(status.streamsTotal >= 1uL, "$status")
            assertTrue(status.bytesReceived >= TestNetwork.BIG.size.toULong(), "$status")
            assertTrue(status.bytesSent > 0uL, "$status")
            proxy.stop()
        }
    }

    @Test
    fun `the listener receives state changes and log lines`(): Unit = runBlocking {
        val states = LinkedBlockingQueue<ProxyState>()
        val logs = LinkedBlockingQueue<String>()
        proxy().use { proxy ->
            proxy.setListener(object : ProxyListener {
                override fun onStateChanged(state: ProxyState) {
                    states.put(state)
                }

                override fun onEvent(event: ProxyEvent) {}

                override fun onLog(level: LogLevel, target: String, message: String) {
                    logs.put("$level $target $message")
                }
            })
            proxy.start()
            proxy.stop()
            val seen = List(4) { states.poll(5, TimeUnit.SECONDS) }
            assertEquals(
                listOf(ProxyState.STARTING, ProxyState.RUNNING, ProxyState.STOPPING, ProxyState.STOPPED),
                seen,
            )
            val deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(5)
            var running: String? = null
            while (running == null && System.nanoTime() < deadline) {
                running = logs.poll(100, TimeUnit.MILLISECONDS)?.takeIf { "proxy running" in it }
            }
            assertNotNull(running, "no `proxy running` log line")
            assertTrue(running!!.startsWith("INFO nws::"), running)
            proxy.setListener(null)
        }
    }

    @Test
    fun `errors are typed`(): Unit = runBlocking {
        assertThrows<NwsException.InvalidConfig> { NwsProxy(ProxyConfig(relays = listOf("http://x"))) }

        val silentExit = resolve(NamesTest.DRAFT_DOMAIN).npub // no exit listens with this key
        proxy(ProxyConfig(relays = listOf(net.relayUrl), connectTimeoutMs = 1500uL)).use { proxy ->
            assertThrows<NwsException.Stopped> { proxy.openStream("$silentExit:80") }
            proxy.start()
            val timeout = assertThrows<NwsException.Timeout> { proxy.openStream("$silentExit:80") }
            assertEquals(1500uL, timeout.timeoutMs)
            assertThrows<NwsException.NotNwsName> { proxy.openStream("example.com:80") }
            assertThrows<NwsException.BadName> { proxy.openStream("abc.nostr:80") }
            assertThrows<NwsException.InvalidConfig> { proxy.openStream(net.httpDomain) }
            proxy.stop()
        }
        // Nothing listens on port 1: no relay is reachable.
        proxy(ProxyConfig(relays = listOf("ws://127.0.0.1:1"), connectTimeoutMs = 1000uL)).use { proxy ->
            proxy.start()
            assertThrows<NwsException.NoRelayReachable> { proxy.openStream("$silentExit:80") }
            proxy.stop()
        }
    }
}
