package org.nostrwebservices.nws

import com.sun.net.httpserver.HttpServer
import java.io.File
import java.net.InetAddress
import java.net.InetSocketAddress
import java.net.ServerSocket
import java.net.Socket
import java.nio.file.Files
import java.util.concurrent.Executors
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit
import kotlin.concurrent.thread

/**
 * What the tests run against, all on 127.0.0.1, started once per JVM and stopped when it exits:
 * the embedded relay (`nws relay`), a JDK HTTP server and a TCP echo server as backends, and
 * one exit (`nws exit`) in front of each backend, plus an exit with an HTTPS front
 * (`--https-port`) for the HTTP backend. `nws` is the binary built from this
 * checkout (`cargo build -p nws-cli`), found in the directory of the system property
 * `nws.target.dir`, like the native library.
 */
object TestNetwork {
    /** The page at `/`. */
    val PAGE: ByteArray =
        "<!doctype html><title>NWS</title><h1>Hello from behind NWS</h1>\n".toByteArray()

    /** 300 000 pseudo-random bytes at `/big` (enough for many events each way). */
    val BIG: ByteArray = java.util.Random(4).let { r -> ByteArray(300_000).also { r.nextBytes(it) } }

    private val dir: File = Files.createTempDirectory("nws-kotlin-tests").toFile()
    private val processes = mutableListOf<NwsProcess>()

    val relayUrl: String
    /** `.nostr` domain of the exit in front of the HTTP backend. */
    val httpDomain: String
    /** nprofile of the same exit. */
    val httpNprofile: String
    /** npub of the same exit (no relays: streams use the configured ones). */
    val httpNpub: String
    /** `.nostr` domain of the exit in front of the echo backend. */
    val echoDomain: String
    /** `.nostr` domain of the exit with an HTTPS front on [FRONT_PORT] for the HTTP backend. */
    val frontDomain: String
    /** npub of the same exit. */
    val frontNpub: String

    /** The port of the HTTPS front (any port: it exists only inside the exit's names). */
    const val FRONT_PORT = 8443

    private val httpServer: HttpServer
    private val echoServer: ServerSocket

    init {
        Runtime.getRuntime().addShutdownHook(Thread { stopAll() })
        httpServer = HttpServer.create(InetSocketAddress(InetAddress.getLoopbackAddress(), 0), 50)
        httpServer.executor = Executors.newCachedThreadPool()
        httpServer.createContext("/") { ex ->
            val body = when (ex.requestURI.path) {
                "/" -> PAGE
                "/big" -> BIG
                else -> null
            }
            if (body == null) {
                ex.sendResponseHeaders(404, -1)
            } else {
                ex.responseHeaders.add("Content-Type", "application/octet-stream")
                ex.sendResponseHeaders(200, body.size.toLong())
                ex.responseBody.use { it.write(body) }
            }
            ex.close()
        }
        httpServer.start()

        echoServer = ServerSocket(0, 50, InetAddress.getLoopbackAddress())
        thread(isDaemon = true, name = "echo-accept") {
            while (!echoServer.isClosed) {
                val s = runCatching { echoServer.accept() }.getOrNull() ?: break
                thread(isDaemon = true, name = "echo") { echo(s) }
            }
        }

        val relay = start("relay", "relay", "--listen", "127.0.0.1:0")
        relayUrl = relay.field("relay")

        val httpExit = start(
            "exit-http", "exit", "--relay", relayUrl,
            "--key-file", File(dir, "http-exit.key").path,
            "--backend", "127.0.0.1:${httpServer.address.port}",
        )
        httpDomain = httpExit.field("domain")
        httpNprofile = httpExit.field("nprofile")
        httpNpub = httpExit.field("npub")

        val echoExit = start(
            "exit-echo", "exit", "--relay", relayUrl,
            "--key-file", File(dir, "echo-exit.key").path,
            "--backend", "127.0.0.1:${echoServer.localPort}",
        )
        echoDomain = echoExit.field("domain")

        val frontExit = start(
            "exit-front", "exit", "--relay", relayUrl,
            "--key-file", File(dir, "front-exit.key").path,
            "--https-port", FRONT_PORT.toString(),
            "--https-target", "127.0.0.1:${httpServer.address.port}",
        )
        frontDomain = frontExit.field("domain")
        frontNpub = frontExit.field("npub")
    }

    private fun echo(s: Socket) {
        s.use {
            val input = it.getInputStream()
            val output = it.getOutputStream()
            val buf = ByteArray(16 * 1024)
            while (true) {
                val n = input.read(buf)
                if (n < 0) break
                output.write(buf, 0, n)
                output.flush()
            }
        }
    }

    private fun start(name: String, vararg args: String): NwsProcess =
        NwsProcess(name, args.toList(), dir).also { synchronized(processes) { processes += it } }

    private fun stopAll() {
        synchronized(processes) { processes.reversed().forEach { it.close() } }
        httpServer.stop(0)
        echoServer.close()
    }

    /** Where the `nws` binary and the native library are. */
    fun targetDir(): File = File(
        System.getProperty("nws.target.dir")
            ?: error("system property nws.target.dir is not set (run the tests with Maven)")
    )
}

/**
 * OkHttp through the HTTP proxy at [host]:[port], answering its 407 with [creds] (none: the
 * 407 is returned). It gives up when the refused request already carried credentials (wrong
 * ones): `priorResponse` is not set on a CONNECT tunnel's 407.
 */
fun okHttpThroughHttpProxy(host: String, port: Int, creds: ProxyCredentials?): okhttp3.OkHttpClient =
    okhttp3.OkHttpClient.Builder()
        .proxy(java.net.Proxy(java.net.Proxy.Type.HTTP, InetSocketAddress(host, port)))
        .proxyAuthenticator { _, response ->
            if (creds == null || response.request.header("Proxy-Authorization") != null) {
                null
            } else {
                response.request.newBuilder()
                    .header("Proxy-Authorization", okhttp3.Credentials.basic(creds.username, creds.password))
                    .build()
            }
        }
        .build()

/**
 * One `nws` process: started with [args], its stdout read line by line until `ready`; each
 * `key: value` line before that is a [field]. Its stderr goes to `<dir>/<name>.log`.
 * [close] sends SIGTERM and waits.
 */
class NwsProcess(private val name: String, args: List<String>, dir: File) : AutoCloseable {
    private val log = File(dir, "$name.log")
    private val process: Process
    private val fields = mutableMapOf<String, String>()

    init {
        val binary = File(TestNetwork.targetDir(), "nws")
        check(binary.canExecute()) { "$binary not found: run `cargo build -p nws-cli` first" }
        process = ProcessBuilder(listOf(binary.path) + args)
            .redirectError(ProcessBuilder.Redirect.to(log))
            .start()
        val lines = LinkedBlockingQueue<String>()
        thread(isDaemon = true, name = "$name-stdout") {
            process.inputStream.bufferedReader().forEachLine { lines.put(it) }
            lines.put("\u0000eof")
        }
        val deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60)
        while (true) {
            val left = deadline - System.nanoTime()
            val line = lines.poll(maxOf(left, 0), TimeUnit.NANOSECONDS)
                ?: fail("no `ready` within 60 s")
            if (line == "ready") break
            if (line == "\u0000eof") fail("exited before `ready`")
            val (k, v) = line.split(": ", limit = 2).let { if (it.size == 2) it else return@let null }
                ?: continue
            fields.putIfAbsent(k, v)
        }
    }

    private fun fail(why: String): Nothing {
        process.destroyForcibly()
        error("nws $name: $why; stderr:\n${log.takeIf { it.exists() }?.readText()?.takeLast(4000)}")
    }

    /** The value of the `key: value` line printed before `ready`. */
    fun field(key: String): String = fields[key] ?: error("nws $name printed no `$key:` line: $fields")

    override fun close() {
        process.destroy()
        if (!process.waitFor(10, TimeUnit.SECONDS)) process.destroyForcibly()
    }
}
