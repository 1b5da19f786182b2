package org.nostrwebservices.nws.demo

import android.app.Activity
import android.os.Bundle
import android.widget.LinearLayout
import android.widget.ScrollView
import android.widget.TextView
import java.net.InetSocketAddress
import java.net.Proxy
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.cancel
import kotlinx.coroutines.delay
import kotlinx.coroutines.isActive
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext
import okhttp3.Credentials
import okhttp3.OkHttpClient
import okhttp3.Request
import org.nostrwebservices.nws.LogLevel
import org.nostrwebservices.nws.NwsProxy
import org.nostrwebservices.nws.ProxyConfig
import org.nostrwebservices.nws.ProxyInfo
import org.nostrwebservices.nws.ProxyListener
import org.nostrwebservices.nws.ProxyState
import org.nostrwebservices.nws.ProxyStatus

/**
 * Starts the in-app NWS proxy on launch, fetches one `.nostr` page through it with OkHttp,
 * and shows the page and the proxy's status (refreshed every second while visible).
 *
 * The page and the relay come from the launch intent:
 * `adb shell am start -n org.nostrwebservices.nws.demo/.MainActivity
 *      --es url http://<domain>.nostr/ --es relay ws://10.0.2.2:7777`
 * (10.0.2.2 is the development machine as seen from the Android emulator).
 */
class MainActivity : Activity() {
    private val scope = CoroutineScope(SupervisorJob() + Dispatchers.Main)
    private lateinit var proxy: NwsProxy
    private lateinit var stateView: TextView
    private lateinit var statusView: TextView
    private lateinit var pageView: TextView

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        val relay = intent.getStringExtra("relay") ?: DEFAULT_RELAY
        val url = intent.getStringExtra("url")

        stateView = TextView(this)
        statusView = TextView(this)
        pageView = TextView(this)
        val column = LinearLayout(this).apply {
            orientation = LinearLayout.VERTICAL
            setPadding(32, 32, 32, 32)
            addView(stateView)
            addView(statusView)
            addView(pageView)
        }
        setContentView(ScrollView(this).apply { addView(column) })

        proxy = NwsProxy(ProxyConfig(relays = listOf(relay)))
        proxy.setListener(object : ProxyListener {
            // Called on the library's listener thread: hop to the UI thread.
            override fun onStateChanged(state: ProxyState) {
                runOnUiThread { stateView.text = "Proxy: $state" }
            }

            // Log lines also go to logcat (tag "nws"); nothing more to do here.
            override fun onLog(level: LogLevel, target: String, message: String) {}
        })

        scope.launch {
            try {
                val info = proxy.start()
                if (url == null) {
                    pageView.text = "No page to fetch: launch with --es url http://<domain>.nostr/"
                    return@launch
                }
                pageView.text = "Fetching $url …"
                pageView.text = withContext(Dispatchers.IO) { fetch(info, url) }
            } catch (e: Exception) {
                pageView.text = "Failed: ${e.message}"
            }
        }
        scope.launch {
            while (isActive) {
                statusView.text = describe(proxy.status())
                delay(1000)
            }
        }
    }

    override fun onDestroy() {
        scope.cancel()
        val p = proxy
        // stop() suspends until listeners and relay connections are closed.
        CoroutineScope(Dispatchers.Default).launch {
            p.stop()
            p.close()
        }
        super.onDestroy()
    }

    /** GET [url] with OkHttp through the proxy's HTTP port, with its credentials. */
    private fun fetch(info: ProxyInfo, url: String): String {
        val creds = info.credentials
        val client = OkHttpClient.Builder()
            .proxy(Proxy(Proxy.Type.HTTP, InetSocketAddress(info.host, info.httpPort!!.toInt())))
            .proxyAuthenticator { _, response ->
                if (creds == null || response.priorResponse != null) {
                    null
                } else {
                    response.request.newBuilder()
                        .header("Proxy-Authorization", Credentials.basic(creds.username, creds.password))
                        .build()
                }
            }
            .build()
        client.newCall(Request.Builder().url(url).build()).execute().use { response ->
            return "HTTP ${response.code}\n\n${response.body?.string().orEmpty()}"
        }
    }

    private fun describe(s: ProxyStatus): String =
        "Relays ${s.relaysConnected}/${s.relaysKnown} connected · streams ${s.streamsOpen} open, " +
            "${s.streamsTotal} total · ${s.bytesSent} B up, ${s.bytesReceived} B down"

    private companion object {
        const val DEFAULT_RELAY = "ws://10.0.2.2:7777"
    }
}
