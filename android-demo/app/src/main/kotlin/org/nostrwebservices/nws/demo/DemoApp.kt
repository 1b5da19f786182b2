package org.nostrwebservices.nws.demo

import android.app.Application
import java.io.IOException
import java.net.InetSocketAddress
import java.net.Proxy
import java.util.concurrent.CopyOnWriteArrayList
import kotlin.coroutines.resume
import kotlin.coroutines.resumeWithException
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.async
import kotlinx.coroutines.suspendCancellableCoroutine
import okhttp3.Call
import okhttp3.Callback
import okhttp3.Credentials
import okhttp3.OkHttpClient
import okhttp3.Request
import okhttp3.Response
import org.nostrwebservices.nws.LogLevel
import org.nostrwebservices.nws.NwsProxy
import org.nostrwebservices.nws.ProxyConfig
import org.nostrwebservices.nws.ProxyInfo
import org.nostrwebservices.nws.ProxyEvent
import org.nostrwebservices.nws.ProxyListener
import org.nostrwebservices.nws.ProxyState

/**
 * The process-wide owner of the NWS proxy (registered as `android:name` of `<application>` in
 * AndroidManifest.xml). Activities come and go (a rotation destroys and recreates one); the proxy,
 * its ports and its credentials stay, so clients configured with them keep working.
 *
 * Activities only observe: they ask [start] for the proxy's info, read [proxy]'s status, and add
 * and remove state observers. The [ProxyListener] set on the proxy belongs to this object and
 * holds no activity.
 *
 * The proxy is not stopped when the last activity goes: Android gives an app no dependable "last
 * moment" (`Application.onTerminate` is never called on devices), and an idle started proxy costs
 * no CPU (docs/MOBILE.md, "Size and idle footprint"). An app that wants it stopped in the
 * background calls `proxy.stop()` from its own lifecycle signal.
 */
class DemoApp : Application() {
    /** Outlives every activity: a `start()` running here is not cancelled by a rotation. */
    private val scope = CoroutineScope(SupervisorJob() + Dispatchers.Default)
    private val stateObservers = CopyOnWriteArrayList<(ProxyState) -> Unit>()
    private var proxy: NwsProxy? = null
    private var proxyRelay: String? = null
    private var client: Pair<ProxyInfo, OkHttpClient>? = null

    /**
     * The proxy, made on the first call with [relay]; later calls get the same proxy whatever
     * relay they name (see [relay]).
     */
    @Synchronized
    fun proxy(relay: String): NwsProxy =
        proxy ?: NwsProxy(ProxyConfig(relays = listOf(relay))).also { p ->
            // Called in order on the library's thread `nws-listener`. It refers to this
            // process-wide object only, never to an activity.
            p.setListener(object : ProxyListener {
                override fun onStateChanged(state: ProxyState) {
                    stateObservers.forEach { it(state) }
                }

                // Relay and stream health; the demo shows the state only (an app would
                // rather collect `NwsProxyMonitor.health`, a StateFlow).
                override fun onEvent(event: ProxyEvent) {}

                // Log lines also go to logcat (tag "nws"); nothing more to do here.
                override fun onLog(level: LogLevel, target: String, message: String) {}
            })
            proxy = p
            proxyRelay = relay
        }

    /** The relay the proxy was made with, or null before [proxy] was first called. */
    @Synchronized
    fun relay(): String? = proxyRelay

    /**
     * Starts the proxy, or returns the running proxy's info (same ports and credentials). The
     * start runs in this object's scope: a caller cancelled meanwhile (an activity destroyed by
     * a rotation) stops waiting, but does not cancel the start, which the bindings would undo,
     * leaving the proxy stopped.
     */
    suspend fun start(proxy: NwsProxy): ProxyInfo = scope.async { proxy.start() }.await()

    /** [observer] is called on the library's listener thread at every state change. */
    fun addStateObserver(observer: (ProxyState) -> Unit) {
        stateObservers.add(observer)
    }

    fun removeStateObserver(observer: (ProxyState) -> Unit) {
        stateObservers.remove(observer)
    }

    /**
     * GET [url] with OkHttp through the proxy's HTTP port, answering its 407 with the proxy's
     * credentials; returns the status line and body. Cancelling the caller cancels the call.
     */
    suspend fun fetch(info: ProxyInfo, url: String): String {
        val call = client(info).newCall(Request.Builder().url(url).build())
        return suspendCancellableCoroutine { cont ->
            cont.invokeOnCancellation { call.cancel() }
            call.enqueue(object : Callback {
                override fun onFailure(call: Call, e: IOException) {
                    cont.resumeWithException(e)
                }

                override fun onResponse(call: Call, response: Response) {
                    val text = try {
                        response.use { "HTTP ${it.code}\n\n${it.body?.string().orEmpty()}" }
                    } catch (e: IOException) {
                        cont.resumeWithException(e)
                        return
                    }
                    cont.resume(text)
                }
            })
        }
    }

    /** One OkHttpClient per proxy info (its port and credentials), shared by all fetches. */
    @Synchronized
    private fun client(info: ProxyInfo): OkHttpClient {
        client?.let { (cached, c) -> if (cached == info) return c }
        val creds = info.credentials
        val c = OkHttpClient.Builder()
            .proxy(Proxy(Proxy.Type.HTTP, InetSocketAddress(info.host, info.httpPort!!.toInt())))
            .proxyAuthenticator { _, response ->
                // Give up when the refused request already carried the credentials: they
                // are wrong. (priorResponse would miss a CONNECT's second 407.)
                if (creds == null || response.request.header("Proxy-Authorization") != null) {
                    null
                } else {
                    response.request.newBuilder()
                        .header("Proxy-Authorization", Credentials.basic(creds.username, creds.password))
                        .build()
                }
            }
            .build()
        client = info to c
        return c
    }
}
