// A Java HTTPS client configured as an app would be, correctly or with one known mistake, for tlsgate's
// ground-truth matrix (tests/live/test_probe_matrix_stacks.py). JDK classes only: HttpsURLConnection.
//
// Usage: java -cp DIR Client CONFIG PROXY CA_PEM URL...
//
//   CONFIG  default          a trust store holding the test CA (TrustManagerFactory, PKIX), the default
//                            HostnameVerifier: everything else as the JDK ships it
//           trust-all        an X509TrustManager whose checkServerTrusted returns without a look
//           allow-all-hosts  the trust store as in default, and a HostnameVerifier that returns true
//           swallow-expired  an X509TrustManager that calls the default one (the trust store as in
//                            default) and ignores its CertificateException when a CertificateExpiredException
//                            is among its causes (not CertificateNotYetValidException: that one still fails)
//   PROXY   http://host:port: every URL through it as an HTTP proxy (a java.net.Proxy object, so that
//           http.nonProxyHosts, which leaves out 127.*, does not apply), or - to connect directly
//
// One line per URL, in order: "ACCEPTED <status> <X-Tlsgate-Check header>" when the client sent its
// request and read an answer, "REFUSED <exception>" when it did not. A new SSLContext per URL (no session
// is resumed) and no keep-alive: every URL is a connection of its own.

import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.net.InetSocketAddress;
import java.net.Proxy;
import java.net.URI;
import java.net.URL;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyStore;
import java.security.cert.CertificateException;
import java.security.cert.CertificateExpiredException;
import java.security.cert.CertificateFactory;
import java.security.cert.X509Certificate;
import javax.net.ssl.HostnameVerifier;
import javax.net.ssl.HttpsURLConnection;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManager;
import javax.net.ssl.TrustManagerFactory;
import javax.net.ssl.X509TrustManager;

public class Client {
    public static void main(String[] args) throws Exception {
        if (args.length < 4) {
            System.err.println("usage: Client CONFIG PROXY CA_PEM URL...");
            System.exit(2);
        }
        System.setProperty("http.keepAlive", "false");
        String config = args[0];
        Proxy proxy = Proxy.NO_PROXY;
        if (!args[1].equals("-")) {
            URI through = URI.create(args[1]);
            proxy = new Proxy(Proxy.Type.HTTP, new InetSocketAddress(through.getHost(), through.getPort()));
        }
        KeyStore store = KeyStore.getInstance(KeyStore.getDefaultType());
        store.load(null, null);
        try (InputStream in = new ByteArrayInputStream(Files.readAllBytes(Path.of(args[2])))) {
            store.setCertificateEntry("test-ca", CertificateFactory.getInstance("X.509").generateCertificate(in));
        }
        for (int i = 3; i < args.length; i++) {
            System.out.println(get(config, proxy, store, args[i]));
        }
    }

    static X509TrustManager trustStore(KeyStore store) throws Exception {
        TrustManagerFactory factory = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        factory.init(store);
        for (TrustManager manager : factory.getTrustManagers()) {
            if (manager instanceof X509TrustManager) {
                return (X509TrustManager) manager;
            }
        }
        throw new IllegalStateException("no X509TrustManager");
    }

    /** The mistake from countless answers on the web: trust every certificate. */
    static final class TrustAll implements X509TrustManager {
        public void checkClientTrusted(X509Certificate[] chain, String authType) {}

        public void checkServerTrusted(X509Certificate[] chain, String authType) {}

        public X509Certificate[] getAcceptedIssuers() {
            return new X509Certificate[0];
        }
    }

    /** "Our backend's certificate expired, keep the app working": the default checks, an expired one let through. */
    static final class SwallowExpired implements X509TrustManager {
        private final X509TrustManager delegate;

        SwallowExpired(X509TrustManager delegate) {
            this.delegate = delegate;
        }

        public void checkClientTrusted(X509Certificate[] chain, String authType) throws CertificateException {
            delegate.checkClientTrusted(chain, authType);
        }

        public void checkServerTrusted(X509Certificate[] chain, String authType) throws CertificateException {
            try {
                delegate.checkServerTrusted(chain, authType);
            } catch (CertificateException e) {
                for (Throwable cause = e; cause != null; cause = cause.getCause()) {
                    if (cause instanceof CertificateExpiredException) {
                        return;
                    }
                }
                throw e;
            }
        }

        public X509Certificate[] getAcceptedIssuers() {
            return delegate.getAcceptedIssuers();
        }
    }

    static String get(String config, Proxy proxy, KeyStore store, String target) {
        try {
            X509TrustManager manager;
            HostnameVerifier verifier = null;
            switch (config) {
                case "default":
                    manager = trustStore(store);
                    break;
                case "trust-all":
                    manager = new TrustAll();
                    break;
                case "allow-all-hosts":
                    manager = trustStore(store);
                    verifier = (hostname, session) -> true;
                    break;
                case "swallow-expired":
                    manager = new SwallowExpired(trustStore(store));
                    break;
                default:
                    throw new IllegalArgumentException("unknown config " + config);
            }
            SSLContext context = SSLContext.getInstance("TLS");
            context.init(null, new TrustManager[] {manager}, null);
            URL url = URI.create(target).toURL();
            HttpsURLConnection connection = (HttpsURLConnection) url.openConnection(proxy);
            connection.setSSLSocketFactory(context.getSocketFactory());
            if (verifier != null) {
                connection.setHostnameVerifier(verifier);
            }
            connection.setConnectTimeout(15000);
            connection.setReadTimeout(15000);
            connection.setRequestProperty("User-Agent", "java-stack-test");
            int status = connection.getResponseCode();
            InputStream body = status < 400 ? connection.getInputStream() : connection.getErrorStream();
            if (body != null) {
                body.readAllBytes();
                body.close();
            }
            String check = connection.getHeaderField("X-Tlsgate-Check");
            connection.disconnect();
            return "ACCEPTED " + status + " " + (check == null ? "-" : check);
        } catch (IOException e) {
            return ("REFUSED " + e).replaceAll("\\s+", " ");
        } catch (Exception e) {
            return ("ERROR " + e).replaceAll("\\s+", " ");
        }
    }
}
