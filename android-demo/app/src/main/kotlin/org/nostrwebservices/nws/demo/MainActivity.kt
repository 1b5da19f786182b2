package org.nostrwebservices.nws.demo

import android.app.Activity
import android.os.Bundle
import android.widget.LinearLayout
import android.widget.ScrollView
import android.widget.TextView
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.cancel
import kotlinx.coroutines.delay
import kotlinx.coroutines.isActive
import kotlinx.coroutines.launch
import org.nostrwebservices.nws.ProxyState
import org.nostrwebservices.nws.ProxyStatus

/**
 * Shows the process-wide NWS proxy of [DemoApp]: its state, its status (refreshed every second
 * while the activity exists) and one page fetched through it with OkHttp. The activity owns
 * nothing of the proxy: a rotation recreates it and it finds the same proxy, ports and
 * credentials.
 *
 * The page and the relay come from the launch intent:
 * `adb shell am start -n org.nostrwebservices.nws.demo/.MainActivity
 *      --es relay ws://10.0.2.2:7777 --es url http://<pubkey label>.nostr/`
 * (10.0.2.2 is the development machine as seen from the Android emulator; a `.nostr` name
 * without relay labels uses the app's relay; see docs/MOBILE.md, "The demo app").
 */
class MainActivity : Activity() {
    private val scope = CoroutineScope(SupervisorJob() + Dispatchers.Main)
    private lateinit var app: DemoApp
    private lateinit var stateView: TextView
    private lateinit var statusView: TextView
    private lateinit var pageView: TextView

    /** Called on the library's listener thread; removed in onDestroy. */
    private val onState: (ProxyState) -> Unit = { state ->
        runOnUiThread { stateView.text = "Proxy: $state" }
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        app = application as DemoApp
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

        val proxy = app.proxy(relay)
        app.addStateObserver(onState)
        stateView.text = "Proxy: ${proxy.state()}"
        val madeWith = app.relay()
        val note = if (madeWith != relay) {
            "(The proxy was made with relay $madeWith; restart the app to use $relay.)\n\n"
        } else {
            ""
        }

        scope.launch {
            try {
                val info = app.start(proxy)
                if (url == null) {
                    pageView.text = note + "No page to fetch: launch with --es url http://<pubkey label>.nostr/"
                    return@launch
                }
                pageView.text = "${note}Fetching $url …"
                pageView.text = note + app.fetch(info, url)
            } catch (e: Exception) {
                if (!isActive) throw e // cancelled with the activity: nothing to show
                pageView.text = "${note}Failed: ${e.message}"
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
        app.removeStateObserver(onState)
        scope.cancel()
        super.onDestroy()
    }

    private fun describe(s: ProxyStatus): String =
        "Relays ${s.relaysConnected}/${s.relaysKnown} connected · streams ${s.streamsOpen} open, " +
            "${s.streamsTotal} total · ${s.bytesSent} B up, ${s.bytesReceived} B down"

    private companion object {
        const val DEFAULT_RELAY = "ws://10.0.2.2:7777"
    }
}
