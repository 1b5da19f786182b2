plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

android {
    namespace = "org.nostrwebservices.nws.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "org.nostrwebservices.nws.demo"
        minSdk = 21
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
        ndk {
            abiFilters += listOf("arm64-v8a", "armeabi-v7a", "x86_64")
        }
    }

    sourceSets["main"].apply {
        // The generated Kotlin bindings, as committed (scripts/gen-bindings.sh).
        java.srcDir("../../bindings/kotlin/src/main/kotlin")
        // libnws.so per ABI, built by scripts/build-android.sh.
        jniLibs.srcDir("../../target/android/jniLibs")
    }

    buildTypes {
        release {
            // R8 as in a shipped app. The demo compiles nws.kt from source instead of using
            // the AAR, so it names the consumer rules the AAR carries as proguard.txt.
            isMinifyEnabled = true
            proguardFiles(
                getDefaultProguardFile("proguard-android-optimize.txt"),
                "../../bindings/kotlin/consumer-rules.pro",
            )
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions {
        jvmTarget = "17"
    }
}

dependencies {
    // JNA's Android AAR carries libjnidispatch.so for each ABI.
    implementation("net.java.dev.jna:jna:5.17.0@aar")
    implementation("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.10.2")
    implementation("com.squareup.okhttp3:okhttp:4.12.0")
}
