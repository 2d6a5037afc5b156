package gateway

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/vs"
)

func proxyService(t *testing.T, c TrustedProxyConfig) (*Service, *bytes.Buffer) {
	t.Helper()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	return &Service{cfg: Config{TrustedProxy: c}, log: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}, &logs
}

func request(peer string, hdr map[string][]string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/v1/encryption/i-1/generate-secret", nil)
	r.RemoteAddr = peer
	for k, vs := range hdr {
		for _, v := range vs {
			r.Header.Add(k, v)
		}
	}
	return r
}

func TestOrigin(t *testing.T) {
	t.Parallel()
	cidrs, err := ParseCIDRs("10.0.0.0/24, 192.0.2.7, 2001:db8::/32")
	if err != nil {
		t.Fatal(err)
	}
	on := TrustedProxyConfig{CIDRs: cidrs, SourceIPHeader: "X-Forwarded-For", VPCIDHeader: "X-Amzn-Vpc-Id"}
	xff := func(v ...string) map[string][]string {
		return map[string][]string{"X-Forwarded-For": v, "X-Amzn-Vpc-Id": {"vpc-0a1b2c3d4e5f60718"}}
	}
	for _, tc := range []struct {
		name     string
		cfg      TrustedProxyConfig
		peer     string
		hdr      map[string][]string
		ip, vpc  string
		debugLog bool
	}{
		{"off by default: headers ignored", TrustedProxyConfig{}, "10.0.0.5:4431", xff("10.9.9.9"), "10.0.0.5", "", false},
		{"trusted proxy: last hop", on, "10.0.0.5:4431", xff("203.0.113.1, 10.1.2.3"), "10.1.2.3", "vpc-0a1b2c3d4e5f60718", false},
		{"trusted proxy: last of several lines", on, "10.0.0.5:4431", xff("1.1.1.1", "10.1.2.4"), "10.1.2.4", "vpc-0a1b2c3d4e5f60718", false},
		{"trusted single host", on, "192.0.2.7:1", xff("10.1.2.5:5555"), "10.1.2.5", "vpc-0a1b2c3d4e5f60718", false},
		{"trusted ipv6 proxy, ipv6 caller", on, "[2001:db8::1]:443", xff("[2001:db8:1::5]"), "2001:db8:1::5", "vpc-0a1b2c3d4e5f60718", false},
		{"ipv4-mapped caller is unmapped", on, "10.0.0.5:1", xff("::ffff:10.1.2.6"), "10.1.2.6", "vpc-0a1b2c3d4e5f60718", false},
		{"untrusted peer: headers ignored and logged", on, "10.0.1.5:4431", xff("10.1.2.3"), "10.0.1.5", "", true},
		{"untrusted peer without headers: no log", on, "10.0.1.5:4431", nil, "10.0.1.5", "", false},
		{"trusted proxy, garbage address: peer used", on, "10.0.0.5:1", xff("not-an-ip"), "10.0.0.5", "vpc-0a1b2c3d4e5f60718", false},
		{"trusted proxy, garbage vpc: ignored", on, "10.0.0.5:1",
			map[string][]string{"X-Forwarded-For": {"10.1.2.3"}, "X-Amzn-Vpc-Id": {"vpc-XYZ"}}, "10.1.2.3", "", false},
		{"trusted proxy, two vpc headers: ignored", on, "10.0.0.5:1",
			map[string][]string{"X-Amzn-Vpc-Id": {"vpc-0a1b2c3d", "vpc-0a1b2c3e"}}, "10.0.0.5", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, logs := proxyService(t, tc.cfg)
			ip, vpc := s.origin(request(tc.peer, tc.hdr))
			if ip != tc.ip || vpc != tc.vpc {
				t.Fatalf("origin %q %q, want %q %q", ip, vpc, tc.ip, tc.vpc)
			}
			if got := strings.Contains(logs.String(), "ignoring proxy headers from an untrusted peer"); got != tc.debugLog {
				t.Fatalf("debug log %v, want %v: %s", got, tc.debugLog, logs.String())
			}
		})
	}
}

func TestTrustedProxyConfig(t *testing.T) {
	t.Parallel()
	cidrs, _ := ParseCIDRs("10.0.0.0/8")
	for name, c := range map[string]TrustedProxyConfig{
		"headers without cidrs": {SourceIPHeader: "X-Forwarded-For"},
		"cidrs without headers": {CIDRs: cidrs},
		"bad header name":       {CIDRs: cidrs, SourceIPHeader: "X Forwarded"},
		"identity header":       {CIDRs: cidrs, VPCIDHeader: vs.HeaderAWSIdentity},
	} {
		t.Run(name, func(t *testing.T) {
			if err := c.Validate(); err == nil {
				t.Fatal("accepted")
			}
		})
	}
	if _, err := ParseCIDRs("10.0.0.0/8,nonsense"); err == nil {
		t.Fatal("nonsense cidr accepted")
	}
	if p, err := ParseCIDRs(" 10.1.2.3 , "); err != nil || len(p) != 1 || p[0].String() != "10.1.2.3/32" {
		t.Fatalf("bare address: %v %v", p, err)
	}
}

func TestAWSIdentityHeader(t *testing.T) {
	t.Parallel()
	if v, err := awsIdentityHeader(request("1.2.3.4:5", nil)); v != "" || err != nil {
		t.Fatal(v, err)
	}
	if v, err := awsIdentityHeader(request("1.2.3.4:5", map[string][]string{vs.HeaderAWSIdentity: {"abc"}})); v != "abc" || err != nil {
		t.Fatal(v, err)
	}
	_, err := awsIdentityHeader(request("1.2.3.4:5", map[string][]string{vs.HeaderAWSIdentity: {"a", "b"}}))
	if shared.CodeOf(err) != shared.CodeAuthenticationFailed {
		t.Fatalf("two headers: %v", err)
	}
}
