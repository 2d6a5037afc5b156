package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Bad input and abuse get clear errors and the service keeps serving.
func TestAbuseLeavesServiceServing(t *testing.T) {
	n := testNode
	c, _ := n.newKeystore(t, "/abuse")
	n.cli(t, nil, "xks", "key", "create", "--keystore", "/abuse", "--id", "k")
	waitUsable(t, c)
	ctx := context.Background()
	addr := strings.TrimPrefix(n.gateway, "https://")

	t.Run("malformed TLS", func(t *testing.T) {
		for _, junk := range [][]byte{[]byte("GET / HTTP/1.1\r\n\r\n"), bytes.Repeat([]byte{0x16, 0x03, 0x01, 0xff}, 64), {0x16, 0x03}} {
			conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = conn.Write(junk)
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, _ = io.Copy(io.Discard, conn) // the server answers or closes; it must not hang forever
			conn.Close()
		}
	})
	t.Run("truncated body", func(t *testing.T) {
		conn, err := tls.Dial("tcp", addr, n.http.Transport.(*http.Transport).TLSClientConfig)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "POST /abuse/kms/xks/v1/keys/k/encrypt HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{\"plaintext\":", addr)
		_ = conn.CloseWrite()
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode < 400 {
				t.Fatalf("truncated body answered %d", resp.StatusCode)
			}
		}
		conn.Close()
	})
	t.Run("huge headers", func(t *testing.T) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, n.gateway+"/abuse/kms/xks/v1/keys/k/encrypt", strings.NewReader("{}"))
		req.Header.Set("X-Padding", strings.Repeat("a", 64<<10))
		resp, err := n.http.Do(req)
		if err != nil {
			return // the server may close the connection; serving is checked below
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("status %d", resp.StatusCode)
		}
	})
	t.Run("invalid base64", func(t *testing.T) {
		err := c.DoRaw(ctx, http.MethodPost, "keys/k/encrypt", []byte(`{"requestMetadata":{"awsPrincipalArn":"a","kmsOperation":"Encrypt","kmsRequestId":"r","kmsKeyArn":"k"},"plaintext":"%%%","encryptionAlgorithm":"AES_GCM"}`), nil)
		if xksStatusOf(err) != 400 || xksErrName(err) != "ValidationException" {
			t.Fatalf("got %v", err)
		}
	})
	// Still serving.
	if _, err := c.Encrypt(ctx, "k", []byte("still here"), nil, false); err != nil {
		t.Fatalf("service stopped serving after abuse: %v", err)
	}
}
