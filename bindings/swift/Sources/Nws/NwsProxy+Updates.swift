// Hand-written (scripts/gen-bindings.sh does not touch this file).
// Not compiled here (no Swift toolchain on the machine that builds NWS); see docs/MOBILE.md.

import Foundation

/// One thing a proxy's listener received, as `NwsProxy.updates()` yields it.
public enum NwsProxyUpdate: Sendable {
    /// The proxy moved to this lifecycle state.
    case state(ProxyState)
    /// A relay connected or disconnected, streams opened or closed, a failed
    /// start, lost listeners.
    case event(ProxyEvent)
    /// A log line of the library.
    case log(level: LogLevel, target: String, message: String)
}

/// Forwards listener calls into an `AsyncStream` continuation.
private final class UpdateForwarder: ProxyListener, @unchecked Sendable {
    private let continuation: AsyncStream<NwsProxyUpdate>.Continuation

    init(_ continuation: AsyncStream<NwsProxyUpdate>.Continuation) {
        self.continuation = continuation
    }

    func onStateChanged(state: ProxyState) {
        continuation.yield(.state(state))
    }

    func onEvent(event: ProxyEvent) {
        continuation.yield(.event(event))
    }

    func onLog(level: LogLevel, target: String, message: String) {
        continuation.yield(.log(level: level, target: target, message: message))
    }
}

extension NwsProxy {
    /// The proxy's state changes, events and log lines as an `AsyncStream`.
    ///
    /// The stream becomes the proxy's listener (a proxy has one:
    /// `setListener` replaces the previous one); when the stream ends (the
    /// `for await` loop's task is cancelled, or the loop breaks), the
    /// listener is removed. A consumer that falls behind loses the oldest
    /// updates past `bufferingNewest`.
    ///
    /// ```swift
    /// for await update in proxy.updates() {
    ///     if case .event(.relayConnected(_, let connected, _)) = update { show(connected) }
    /// }
    /// ```
    public func updates(bufferingNewest: Int = 256) -> AsyncStream<NwsProxyUpdate> {
        AsyncStream(bufferingPolicy: .bufferingNewest(bufferingNewest)) { continuation in
            let forwarder = UpdateForwarder(continuation)
            self.setListener(listener: forwarder)
            continuation.onTermination = { [weak self] _ in
                self?.setListener(listener: nil)
            }
        }
    }
}
