// A Go HTTPS client configured as an app would be, correctly or with one known mistake, for tlsgate's
// ground-truth matrix (tests/live/test_probe_matrix_stacks.py). Standard library only.
//
// Usage: client CONFIG PROXY CA_PEM URL...
//
//	CONFIG  default      RootCAs = the test CA, everything else as Go ships it
//	        insecure     InsecureSkipVerify: true
//	        handwritten  InsecureSkipVerify: true plus a VerifyPeerCertificate that checks, for each
//	                     certificate the server sent, that its issuer name is the next one's subject (the
//	                     last one's: the CA's) and that its signature verifies with that certificate's key
//	                     (x509.Certificate.CheckSignature, which accepts SHA-1); nothing else: not the host
//	                     name, the dates, basicConstraints, pathLen, name constraints, key usage, EKU or
//	                     key size
//	PROXY   http://host:port (every URL through it, as an HTTP proxy: CONNECT), or - to connect directly
//
// One line per URL, in order: "ACCEPTED <status> <X-Tlsgate-Check header>" when the client sent its
// request and read an answer, "REFUSED <error>" when it did not. A new Transport per URL, without
// keep-alive: every URL is a connection of its own, as the probe schedule counts them.
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

func main() {
	if len(os.Args) < 5 {
		fmt.Fprintln(os.Stderr, "usage: client CONFIG PROXY CA_PEM URL...")
		os.Exit(2)
	}
	config, proxy, caFile, urls := os.Args[1], os.Args[2], os.Args[3], os.Args[4:]
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	tlsConfig, err := configure(config, caPEM)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	for _, target := range urls {
		fmt.Println(get(tlsConfig, proxy, target))
	}
}

func configure(config string, caPEM []byte) (*tls.Config, error) {
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("no certificate in the CA file")
	}
	switch config {
	case "default":
		return &tls.Config{RootCAs: roots}, nil
	case "insecure":
		return &tls.Config{InsecureSkipVerify: true}, nil
	case "handwritten":
		block, _ := pem.Decode(caPEM)
		ca, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		return &tls.Config{
			InsecureSkipVerify: true,
			VerifyPeerCertificate: func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
				return signedUpTo(rawCerts, ca)
			},
		}, nil
	}
	return nil, fmt.Errorf("unknown config %q", config)
}

// signedUpTo is the classic hand-rolled verifier: a chain of names and signatures ending at the CA.
func signedUpTo(rawCerts [][]byte, ca *x509.Certificate) error {
	chain := make([]*x509.Certificate, 0, len(rawCerts)+1)
	for _, raw := range rawCerts {
		cert, err := x509.ParseCertificate(raw)
		if err != nil {
			return err
		}
		chain = append(chain, cert)
	}
	if len(chain) == 0 {
		return errors.New("no certificate")
	}
	chain = append(chain, ca)
	for i := 0; i+1 < len(chain); i++ {
		cert, issuer := chain[i], chain[i+1]
		if !bytes.Equal(cert.RawIssuer, issuer.RawSubject) {
			return fmt.Errorf("certificate %d: issuer %q is not %q", i, cert.Issuer, issuer.Subject)
		}
		if err := issuer.CheckSignature(cert.SignatureAlgorithm, cert.RawTBSCertificate, cert.Signature); err != nil {
			return fmt.Errorf("certificate %d: %w", i, err)
		}
	}
	return nil
}

func get(tlsConfig *tls.Config, proxy, target string) string {
	transport := &http.Transport{TLSClientConfig: tlsConfig.Clone(), DisableKeepAlives: true, ForceAttemptHTTP2: false}
	if proxy != "-" {
		proxyURL, err := url.Parse(proxy)
		if err != nil {
			return "REFUSED " + err.Error()
		}
		transport.Proxy = http.ProxyURL(proxyURL)
	}
	client := &http.Client{Transport: transport, Timeout: 15 * time.Second}
	defer transport.CloseIdleConnections()
	request, err := http.NewRequest("GET", target, nil)
	if err != nil {
		return "REFUSED " + err.Error()
	}
	request.Header.Set("User-Agent", "go-stack-test")
	response, err := client.Do(request)
	if err != nil {
		return "REFUSED " + oneLine(err.Error())
	}
	defer response.Body.Close()
	_, _ = io.Copy(io.Discard, response.Body)
	check := response.Header.Get("X-Tlsgate-Check")
	if check == "" {
		check = "-"
	}
	return fmt.Sprintf("ACCEPTED %d %s", response.StatusCode, check)
}

func oneLine(text string) string {
	return strings.Join(strings.Fields(text), " ")
}
