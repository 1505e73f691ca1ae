"""What apps declare about their own network security, read from their files: facts, no verdicts.

Android: `network_security_config.xml` (source or compiled binary XML inside an
APK, found through the manifest's `android:networkSecurityConfig`), plus the
manifest's target SDK, `usesCleartextTraffic` and `debuggable`. iOS:
`NSAppTransportSecurity` from an `Info.plist` (XML or binary) or an IPA. Both
become one `AppConfig`: per host pattern, what the app promises and which file
and element says so. Nothing here knows tlsgate's policy language or mitmproxy.
"""
