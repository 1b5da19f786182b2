// Hand-written (scripts/gen-bindings.sh does not touch this file).
package org.nostrwebservices.nws

import kotlinx.coroutines.channels.BufferOverflow
import kotlinx.coroutines.flow.MutableSharedFlow
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.SharedFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.asSharedFlow
import kotlinx.coroutines.flow.asStateFlow
import kotlinx.coroutines.flow.update

/**
 * A proxy's health as [NwsProxyMonitor.health] holds it: the lifecycle state and the counts of
 * the last [ProxyEvent]s (relays from `RelayConnected`/`RelayDisconnected`, streams from
 * `StreamsChanged`). Counts are those of the current run; they start at zero on every start.
 */
data class ProxyHealth(
    /** The lifecycle state. */
    val state: ProxyState,
    /** Relays connected now. */
    val relaysConnected: UInt = 0u,
    /** Relays known (configured, or learnt from names used so far). */
    val relaysKnown: UInt = 0u,
    /** Streams open now. */
    val streamsOpen: UInt = 0u,
    /** Streams opened since start. */
    val streamsTotal: ULong = 0u,
) {
    /** Running with at least one relay connected: streams to names on those relays can open. */
    val ready: Boolean get() = state == ProxyState.RUNNING && relaysConnected > 0u
}

/** One log line of the library, as [ProxyListener.onLog] receives it. */
data class ProxyLogLine(val level: LogLevel, val target: String, val message: String)

/**
 * Kotlin flows over a proxy's listener: [state] and [health] as [StateFlow]s (for Compose or a
 * `ViewModel`), [events] and [logs] as [SharedFlow]s.
 *
 * Creating a monitor makes it the proxy's listener (a proxy has one: [NwsProxy.setListener]
 * replaces the previous one); [close] removes it. The monitor holds no `Context` or `Activity`,
 * so keeping it next to the proxy in an Application-scoped holder leaks nothing; collect its
 * flows in a lifecycle-aware scope (`repeatOnLifecycle`, `viewModelScope`).
 *
 * Events and log lines are delivered on the library's listener thread and emitted without
 * suspending; a collector that falls more than [buffer] items behind loses the oldest ones.
 * The state flows always hold the latest values.
 *
 * ```
 * val monitor = proxy.monitor()
 * scope.launch { monitor.health.collect { h -> showRelays(h.relaysConnected) } }
 * ```
 */
class NwsProxyMonitor(private val proxy: NwsProxy, buffer: Int = 64) : AutoCloseable {
    private val stateFlow = MutableStateFlow(proxy.state())
    private val healthFlow = MutableStateFlow(ProxyHealth(proxy.state()))
    private val eventFlow = MutableSharedFlow<ProxyEvent>(
        extraBufferCapacity = buffer,
        onBufferOverflow = BufferOverflow.DROP_OLDEST,
    )
    private val logFlow = MutableSharedFlow<ProxyLogLine>(
        extraBufferCapacity = buffer,
        onBufferOverflow = BufferOverflow.DROP_OLDEST,
    )

    /** The lifecycle state, updated on every change. */
    val state: StateFlow<ProxyState> = stateFlow.asStateFlow()

    /** The state with relay and stream counts, updated on every change of either. */
    val health: StateFlow<ProxyHealth> = healthFlow.asStateFlow()

    /** Every [ProxyEvent] from now on (no replay). */
    val events: SharedFlow<ProxyEvent> = eventFlow.asSharedFlow()

    /** Log lines at or above [setLogLevel]'s level, from now on (no replay). */
    val logs: SharedFlow<ProxyLogLine> = logFlow.asSharedFlow()

    private val listener = object : ProxyListener {
        override fun onStateChanged(state: ProxyState) {
            stateFlow.value = state
            healthFlow.update { h ->
                // A new run starts its counts at zero.
                if (state == ProxyState.STARTING || state == ProxyState.STOPPED) ProxyHealth(state)
                else h.copy(state = state)
            }
        }

        override fun onEvent(event: ProxyEvent) {
            when (event) {
                is ProxyEvent.RelayConnected -> healthFlow.update {
                    it.copy(relaysConnected = event.connected, relaysKnown = event.known)
                }
                is ProxyEvent.RelayDisconnected -> healthFlow.update {
                    it.copy(relaysConnected = event.connected, relaysKnown = event.known)
                }
                is ProxyEvent.StreamsChanged -> healthFlow.update {
                    it.copy(streamsOpen = event.open, streamsTotal = event.total)
                }
                else -> {}
            }
            eventFlow.tryEmit(event)
        }

        override fun onLog(level: LogLevel, target: String, message: String) {
            logFlow.tryEmit(ProxyLogLine(level, target, message))
        }
    }

    init {
        proxy.setListener(listener)
    }

    /** Stops listening to the proxy (the flows keep their last values). */
    override fun close() {
        proxy.setListener(null)
    }
}

/** A [NwsProxyMonitor] for this proxy; it becomes the proxy's listener. */
fun NwsProxy.monitor(buffer: Int = 64): NwsProxyMonitor = NwsProxyMonitor(this, buffer)
