package org.nostrwebservices.nws

import java.io.ByteArrayInputStream
import java.net.InetSocketAddress
import java.net.Proxy
import java.security.KeyStore
import java.security.cert.CertificateFactory
import java.security.cert.X509Certificate
import javax.net.ssl.SSLContext
import javax.net.ssl.SSLHandshakeException
import javax.net.ssl.TrustManagerFactory
import javax.net.ssl.X509TrustManager
import kotlinx.coroutines.runBlocking
import okhttp3.Credentials
import okhttp3.OkHttpClient
import okhttp3.Request
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows

/**
 * `fetchCertificate()`: the HTTPS front certificate of an exit, from its kind-38334 event, used
 * as the only trust anchor for `https://<domain>.nostr/` through the in-app proxy.
 */
class CertificateTest {
    private val net = TestNetwork

    private fun x509(pem: String): X509Certificate =
        CertificateFactory.getInstance("X.509")
            .generateCertificate(ByteArrayInputStream(pem.toByteArray())) as X509Certificate

    /** OkHttp through the HTTP proxy (CONNECT, with credentials), trusting only [pem] if given. */
    private fun client(info: ProxyInfo, pem: String?): OkHttpClient {
        val creds = info.credentials!!
        val builder = OkHttpClient.Builder()
            .proxy(Proxy(Proxy.Type.HTTP, InetSocketAddress(info.host, info.httpPort!!.toInt())))
            .proxyAuthenticator { _, response ->
                if (response.priorResponse != null) {
                    null
                } else {
                    response.request.newBuilder()
                        .header("Proxy-Authorization", Credentials.basic(creds.username, creds.password))
                        .build()
                }
            }
        if (pem != null) {
            val store = KeyStore.getInstance(KeyStore.getDefaultType()).apply {
                load(null, null)
                setCertificateEntry("front", x509(pem))
            }
            val tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm())
            tmf.init(store)
            val trust = tmf.trustManagers.single() as X509TrustManager
            val tls = SSLContext.getInstance("TLS").apply { init(null, arrayOf(trust), null) }
            builder.sslSocketFactory(tls.socketFactory, trust)
        }
        return builder.build()
    }

    @Test
    fun `fetches the front certificate by domain and by npub`(): Unit = runBlocking {
        val pem = fetchCertificate(net.frontDomain, emptyList())
        assertTrue(pem.startsWith("-----BEGIN CERTIFICATE-----"), pem)
        val names = x509(pem).subjectAlternativeNames.orEmpty()
            .filter { it[0] == 2 }
            .map { it[1] as String }
        assertTrue(net.frontDomain in names, "$names")
        // An npub carries no relays: the given ones are used.
        assertEquals(pem, fetchCertificate(net.frontNpub, listOf(net.relayUrl)))
    }

    @Test
    fun `OkHttp trusts the front with the fetched certificate and only with it`(): Unit = runBlocking {
        val pem = fetchCertificate(net.frontDomain, emptyList())
        NwsProxy(ProxyConfig(relays = listOf(net.relayUrl))).use { proxy ->
            val info = proxy.start()
            val url = "https://${net.frontDomain}:${TestNetwork.FRONT_PORT}/"
            client(info, pem).newCall(Request.Builder().url(url).build()).execute().use {
                assertEquals(200, it.code)
                assertArrayEquals(TestNetwork.PAGE, it.body!!.bytes())
            }
            assertThrows<SSLHandshakeException> {
                client(info, null).newCall(Request.Builder().url(url).build()).execute().close()
            }
            proxy.stop()
        }
    }

    @Test
    fun `other names and exits without a front are typed errors`(): Unit = runBlocking {
        val notNws = assertThrows<NwsException.BadName> { fetchCertificate("example.com", listOf(net.relayUrl)) }
        assertEquals("example.com", notNws.name)
        assertThrows<NwsException.Relay> { fetchCertificate(net.httpNpub, listOf(net.relayUrl)) }
    }
}
