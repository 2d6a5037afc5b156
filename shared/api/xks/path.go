package xks

import (
	"strings"

	"github.com/sovkeys/sovkeys/shared"
)

// Op is an XKS operation as named by the last segment of its URI.
type Op string

// The four operations of the XKS proxy API.
const (
	OpMetadata Op = "metadata"
	OpEncrypt  Op = "encrypt"
	OpDecrypt  Op = "decrypt"
	OpHealth   Op = "health"
)

// API returns the mesh API that serves op, or "" for an unknown op.
func (op Op) API() shared.API {
	switch op {
	case OpMetadata:
		return shared.APIXKSMetadata
	case OpEncrypt:
		return shared.APIXKSEncrypt
	case OpDecrypt:
		return shared.APIXKSDecrypt
	case OpHealth:
		return shared.APIXKSHealth
	}
	return ""
}

// Route is a parsed XKS request URI. Prefix is the key store's path prefix
// without leading or trailing slash ("" for none); KeyID is empty for
// OpHealth.
type Route struct {
	Prefix string
	KeyID  string
	Op     Op
}

// apiRoot is the fixed part of every XKS URI after the optional prefix.
const apiRoot = "/kms/xks/v1"

// URI limits of the specification.
const (
	// MaxURIPathLen bounds XksProxyUriPath, "[/<prefix>]/kms/xks/v1".
	MaxURIPathLen = 128
	// MaxPrefixLen is the longest prefix that keeps "/<prefix>/kms/xks/v1"
	// within MaxURIPathLen.
	MaxPrefixLen = MaxURIPathLen - len(apiRoot) - 1
	// MaxKeyIDLen bounds an external key id.
	MaxKeyIDLen = 128
)

// Path returns the request URI path of r, the inverse of ParsePath.
func (r Route) Path() string {
	p := URIPath(r.Prefix)
	if r.Op == OpHealth {
		return p + "/health"
	}
	return p + "/keys/" + r.KeyID + "/" + string(r.Op)
}

// URIPath returns the XksProxyUriPath an operator enters in KMS for a key
// store with the given prefix: "/<prefix>/kms/xks/v1", or "/kms/xks/v1".
func URIPath(prefix string) string {
	if prefix == "" {
		return apiRoot
	}
	return "/" + prefix + apiRoot
}

// PrefixFromURIPath is the inverse of URIPath: it accepts an XksProxyUriPath
// as configured in KMS and returns the key store prefix.
func PrefixFromURIPath(uriPath string) (string, error) {
	base, ok := strings.CutSuffix(uriPath, apiRoot)
	if !ok || len(uriPath) > MaxURIPathLen {
		return "", shared.NewError(shared.CodeValidation,
			"xks: a URI path must end in %s and have at most %d characters", apiRoot, MaxURIPathLen)
	}
	prefix, ok := prefixOf(base)
	if !ok {
		return "", shared.NewError(shared.CodeValidation,
			"xks: invalid path prefix (segments of [A-Za-z0-9_-] separated by single slashes)")
	}
	return prefix, nil
}

// ParsePath parses the escaped path of an XKS request URI (r.URL.EscapedPath()):
//
//	[/<prefix>]/kms/xks/v1/keys/<keyId>/(metadata|encrypt|decrypt)
//	[/<prefix>]/kms/xks/v1/health
//
// It matches from the end, so a prefix may itself contain "kms/xks/v1". It
// does not look at the method (GET must get 405 whatever the path) nor know
// which prefixes exist; an unknown prefix is the caller's InvalidUriPath.
//
// Any other shape, a trailing slash, an empty segment or an invalid prefix is
// an error with shared.CodeInvalidURIPath. A well-formed path whose key id is
// not a valid external key id (see ValidKeyID) is an error with
// shared.CodeKeyNotFound: no such key can exist. That error comes with the
// Route's Prefix and Op filled in, so the gateway can authenticate the caller
// against the key store before answering.
//
// Nothing is unescaped: every valid prefix and key id character is an
// unreserved URI character, so an escaped path containing "%" is invalid.
func ParsePath(escapedPath string) (Route, error) {
	if base, ok := strings.CutSuffix(escapedPath, apiRoot+"/health"); ok {
		prefix, ok := prefixOf(base)
		if !ok {
			return Route{}, errInvalidURIPath()
		}
		return Route{Prefix: prefix, Op: OpHealth}, nil
	}

	rest, opSeg, ok := cutLastSegment(escapedPath)
	if !ok {
		return Route{}, errInvalidURIPath()
	}
	op := Op(opSeg)
	if op != OpMetadata && op != OpEncrypt && op != OpDecrypt {
		return Route{}, errInvalidURIPath()
	}
	rest, keyID, ok := cutLastSegment(rest)
	if !ok || keyID == "" {
		return Route{}, errInvalidURIPath()
	}
	base, ok := strings.CutSuffix(rest, apiRoot+"/keys")
	if !ok {
		return Route{}, errInvalidURIPath()
	}
	prefix, ok := prefixOf(base)
	if !ok {
		return Route{}, errInvalidURIPath()
	}
	if !ValidKeyID(keyID) {
		return Route{Prefix: prefix, Op: op}, shared.NewError(shared.CodeKeyNotFound,
			"xks: external key not found: a key id has 1 to %d characters of [A-Za-z0-9._-]", MaxKeyIDLen)
	}
	return Route{Prefix: prefix, KeyID: keyID, Op: op}, nil
}

// ValidPrefix reports whether p can be a key store's path prefix: empty (no
// prefix), or segments of [A-Za-z0-9_-] joined by single slashes, with no
// leading or trailing slash, at most MaxPrefixLen characters so that the
// whole XksProxyUriPath stays within the specification's 128. The slash
// convention is ours: the prefix "a/b" serves "/a/b/kms/xks/v1/..." and
// configuration holding "/a/b" must be trimmed (or use PrefixFromURIPath).
func ValidPrefix(p string) bool {
	if p == "" {
		return true
	}
	if len(p) > MaxPrefixLen || p[0] == '/' || p[len(p)-1] == '/' || strings.Contains(p, "//") {
		return false
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		if !(isAlnum(c) || c == '/' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// ValidKeyID reports whether id can be an external key id: 1 to MaxKeyIDLen
// characters of [A-Za-z0-9._-] as the specification requires, except "." and
// "..", which path normalisation in proxies and load balancers would rewrite.
func ValidKeyID(id string) bool {
	if id == "" || len(id) > MaxKeyIDLen || id == "." || id == ".." {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(isAlnum(c) || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// prefixOf turns the part of a path before /kms/xks/v1 into a prefix.
func prefixOf(base string) (string, bool) {
	if base == "" {
		return "", true
	}
	p, ok := strings.CutPrefix(base, "/")
	if !ok || p == "" || !ValidPrefix(p) {
		return "", false
	}
	return p, true
}

// cutLastSegment splits "/a/b/c" into "/a/b" and "c".
func cutLastSegment(p string) (rest, last string, ok bool) {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return "", "", false
	}
	return p[:i], p[i+1:], true
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func errInvalidURIPath() error {
	return shared.NewError(shared.CodeInvalidURIPath, "xks: no XKS API at this URI path")
}
