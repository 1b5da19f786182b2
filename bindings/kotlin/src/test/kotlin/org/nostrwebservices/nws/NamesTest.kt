package org.nostrwebservices.nws

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows

/** `resolve()`: names decoded locally, no network. */
class NamesTest {
    companion object {
        /** The test vector of the NWS draft. */
        const val DRAFT_DOMAIN =
            "etpjkbpf60n30bhg5oo3kdpn6srg.7rqkr7rul8t6vbtekq0b3k274i696g47eo1765t9add20llitt9g.nostr"
    }

    @Test
    fun `resolves the draft test vector`() {
        val r = resolve(DRAFT_DOMAIN)
        assertEquals("3ef54d9f7eaa3a6fafaea680b1d047248c93408776027317a9535a2056b2ef53", r.pubkeyHex)
        assertEquals(listOf("ws://0.0.0.0:7777"), r.relays)
        assertTrue(r.npub.startsWith("npub1"), r.npub)
    }

    @Test
    fun `npub and nprofile resolve to the same key as the domain`() {
        val domain = resolve(DRAFT_DOMAIN)
        val npub = resolve(domain.npub)
        assertEquals(domain.pubkeyHex, npub.pubkeyHex)
        assertEquals(emptyList<String>(), npub.relays)
        // Upper case and a trailing dot are accepted, as in DNS.
        assertEquals(domain, resolve(DRAFT_DOMAIN.uppercase() + "."))
    }

    @Test
    fun `the exit's printed names agree`() {
        val net = TestNetwork
        val byDomain = resolve(net.httpDomain)
        val byProfile = resolve(net.httpNprofile)
        assertEquals(byDomain.pubkeyHex, byProfile.pubkeyHex)
        assertEquals(listOf(net.relayUrl), byDomain.relays)
        assertEquals(net.httpNpub, byDomain.npub)
    }

    @Test
    fun `other hosts and broken names are typed errors`() {
        val notNws = assertThrows<NwsException.NotNwsName> { resolve("example.com") }
        assertEquals("example.com", notNws.host)
        val bad = assertThrows<NwsException.BadName> { resolve("zz.nostr") }
        assertEquals("zz.nostr", bad.name)
        assertTrue(bad.detail.startsWith("bad NWS name"), bad.detail)
    }

    @Test
    fun `the version is the crate version`() {
        assertEquals("0.1.0", version())
    }
}
