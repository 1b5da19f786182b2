// The NWS Android demo: one activity that starts the in-app proxy on launch, fetches a
// `.nostr` page through it with OkHttp and shows the proxy's status. See docs/MOBILE.md.
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}
dependencyResolutionManagement {
    repositories {
        google()
        mavenCentral()
    }
}
rootProject.name = "nws-android-demo"
include(":app")
