package gateway

import (
	"fmt"
	"net/http"
	"net/netip"
	"strings"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/vs"
)

// Trusted proxy mode (off by default; docs/aws-identity.md).
//
// Behind a load balancer or an API gateway the TCP peer is the proxy, not
// the instance. When the peer's address is inside one of the configured
// CIDRs, the caller's source IP is taken from SourceIPHeader (its last,
// rightmost address: the one the proxy itself appended, as with
// X-Forwarded-For) and its VPC id from VPCIDHeader. From any other peer
// those headers are ignored (and logged at debug): anyone can send them.

// TrustedProxyConfig configures trusted proxy mode.
type TrustedProxyConfig struct {
	// CIDRs are the proxies' addresses; empty turns the mode off.
	CIDRs []netip.Prefix
	// SourceIPHeader names the header carrying the caller's address
	// (e.g. X-Forwarded-For); VPCIDHeader the one carrying its VPC id.
	SourceIPHeader string
	VPCIDHeader    string
}

// Enabled reports whether any proxy is trusted.
func (c TrustedProxyConfig) Enabled() bool { return len(c.CIDRs) > 0 }

// Validate checks the configuration.
func (c TrustedProxyConfig) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: trusted proxy: %s", shared.ErrConfigValidation, fmt.Sprintf(format, args...))
	}
	if !c.Enabled() {
		if c.SourceIPHeader != "" || c.VPCIDHeader != "" {
			return bad("--source-ip-header and --vpc-id-header have no effect without --trusted-proxy-cidrs")
		}
		return nil
	}
	if c.SourceIPHeader == "" && c.VPCIDHeader == "" {
		return bad("--trusted-proxy-cidrs needs --source-ip-header and/or --vpc-id-header")
	}
	for _, h := range []string{c.SourceIPHeader, c.VPCIDHeader} {
		if h == "" {
			continue
		}
		if !headerName(h) {
			return bad("%q is not a header name", h)
		}
		if strings.EqualFold(h, vs.HeaderAWSIdentity) || strings.EqualFold(h, "Authorization") || strings.EqualFold(h, "Host") {
			return bad("header %q cannot carry proxy information", h)
		}
	}
	for _, p := range c.CIDRs {
		if !p.IsValid() {
			return bad("invalid cidr")
		}
	}
	return nil
}

func headerName(h string) bool {
	if len(h) > 128 {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return h != ""
}

// ParseCIDRs parses a comma-separated list of CIDRs; a bare address means
// that one host.
func ParseCIDRs(list string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range strings.Split(list, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, fmt.Errorf("%w: trusted proxy cidr %q", shared.ErrConfigValidation, s)
			}
			p = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// origin returns the caller's source IP and, from a trusted proxy, its VPC
// id.
func (s *Service) origin(r *http.Request) (ip, vpc string) {
	peer := sourceIP(r)
	c := s.cfg.TrustedProxy
	if !c.Enabled() {
		return peer, ""
	}
	present := c.SourceIPHeader != "" && len(r.Header.Values(c.SourceIPHeader)) > 0 ||
		c.VPCIDHeader != "" && len(r.Header.Values(c.VPCIDHeader)) > 0
	addr, err := netip.ParseAddr(peer)
	if err != nil || !trusted(c.CIDRs, addr.Unmap()) {
		if present {
			s.log.Debug("ignoring proxy headers from an untrusted peer", "peer", peer)
		}
		return peer, ""
	}
	ip = peer
	if c.SourceIPHeader != "" {
		if vals := r.Header.Values(c.SourceIPHeader); len(vals) > 0 {
			if a, ok := lastHop(vals); ok {
				ip = a
			} else {
				s.log.Warn("trusted proxy sent an unusable source ip header; using the peer address", "peer", peer, "header", c.SourceIPHeader)
			}
		}
	}
	if c.VPCIDHeader != "" {
		switch vals := r.Header.Values(c.VPCIDHeader); {
		case len(vals) == 1 && validVPCID(strings.TrimSpace(vals[0])):
			vpc = strings.TrimSpace(vals[0])
		case len(vals) > 0:
			s.log.Warn("trusted proxy sent an unusable vpc id header; ignoring it", "peer", peer, "header", c.VPCIDHeader)
		}
	}
	return ip, vpc
}

func trusted(cidrs []netip.Prefix, a netip.Addr) bool {
	for _, p := range cidrs {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// lastHop returns the rightmost address of the last header line: the one
// the nearest (trusted) proxy added. Ports and IPv6 brackets are removed.
func lastHop(vals []string) (string, bool) {
	hops := strings.Split(vals[len(vals)-1], ",")
	h := strings.TrimSpace(hops[len(hops)-1])
	if ap, err := netip.ParseAddrPort(h); err == nil {
		return ap.Addr().Unmap().String(), true
	}
	a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(h, "["), "]"))
	if err != nil || a.Zone() != "" {
		return "", false
	}
	return a.Unmap().String(), true
}

// validVPCID reports whether s looks like vpc-<8 or 17 hex digits>.
func validVPCID(s string) bool {
	hexPart, ok := strings.CutPrefix(s, "vpc-")
	if !ok || len(hexPart) != 8 && len(hexPart) != 17 {
		return false
	}
	for i := 0; i < len(hexPart); i++ {
		if c := hexPart[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// awsIdentityHeader returns the caller's X-Sovkeys-AWS-Identity (authn
// verifies it); more than one is refused.
func awsIdentityHeader(r *http.Request) (string, error) {
	switch vals := r.Header.Values(vs.HeaderAWSIdentity); len(vals) {
	case 0:
		return "", nil
	case 1:
		return vals[0], nil
	default:
		return "", shared.NewError(shared.CodeAuthenticationFailed, "more than one %s header", vs.HeaderAWSIdentity)
	}
}
