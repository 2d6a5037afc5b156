package xks

import (
	"strings"
	"testing"

	"github.com/sovkeys/sovkeys/shared"
)

func TestParsePath(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("p", MaxPrefixLen)
	keyID := strings.Repeat("k", MaxKeyIDLen)
	for _, tc := range []struct {
		path string
		want Route
	}{
		{"/kms/xks/v1/health", Route{Op: OpHealth}},
		{"/kms/xks/v1/keys/foo/metadata", Route{KeyID: "foo", Op: OpMetadata}},
		{"/kms/xks/v1/keys/foo/encrypt", Route{KeyID: "foo", Op: OpEncrypt}},
		{"/kms/xks/v1/keys/foo/decrypt", Route{KeyID: "foo", Op: OpDecrypt}},
		{"/path/kms/xks/v1/health", Route{Prefix: "path", Op: OpHealth}},
		{"/keystores/4a0d79d6-1d1b-49fd-9dbe-799cb9c0fb3f/kms/xks/v1/keys/b42c7fbf-de61-441c-ae24-123456789012/encrypt",
			Route{Prefix: "keystores/4a0d79d6-1d1b-49fd-9dbe-799cb9c0fb3f", KeyID: "b42c7fbf-de61-441c-ae24-123456789012", Op: OpEncrypt}},
		{"/example/uri/path/prefix/kms/xks/v1/keys/a.B_c-9/decrypt", Route{Prefix: "example/uri/path/prefix", KeyID: "a.B_c-9", Op: OpDecrypt}},
		{"/A_b-9/kms/xks/v1/keys/x/metadata", Route{Prefix: "A_b-9", KeyID: "x", Op: OpMetadata}},
		{"/" + long + "/kms/xks/v1/health", Route{Prefix: long, Op: OpHealth}},
		{"/kms/xks/v1/keys/" + keyID + "/encrypt", Route{KeyID: keyID, Op: OpEncrypt}},
		// Matching from the end: prefixes that look like API paths.
		{"/kms/xks/v1/kms/xks/v1/health", Route{Prefix: "kms/xks/v1", Op: OpHealth}},
		{"/kms/xks/v1/keys/x/kms/xks/v1/keys/y/encrypt", Route{Prefix: "kms/xks/v1/keys/x", KeyID: "y", Op: OpEncrypt}},
		{"/p/kms/xks/v1/keys/health/metadata", Route{Prefix: "p", KeyID: "health", Op: OpMetadata}},
		{"/p/kms/xks/v1/keys/..../metadata", Route{Prefix: "p", KeyID: "....", Op: OpMetadata}},
	} {
		t.Run(tc.path, func(t *testing.T) {
			got, err := ParsePath(tc.path)
			if err != nil {
				t.Fatalf("ParsePath: %v", err)
			}
			if got != tc.want {
				t.Errorf("ParsePath = %+v, want %+v", got, tc.want)
			}
			if p := got.Path(); p != tc.path {
				t.Errorf("Route.Path = %q, want %q", p, tc.path)
			}
		})
	}
}

func TestParsePathInvalidURIPath(t *testing.T) {
	t.Parallel()
	for _, path := range []string{
		"",
		"/",
		"/kms/xks/v1",
		"/kms/xks/v1/",
		"/kms/xks/v1/health/",                 // trailing slash
		"/kms/xks/v1/keys/foo/encrypt/",       // trailing slash
		"/kms/xks/v1/keys/foo",                // no operation
		"/kms/xks/v1/keys/foo/sign",           // unknown operation
		"/kms/xks/v1/keys/foo/Encrypt",        // case matters
		"/kms/xks/v1/keys//encrypt",           // empty key id
		"/kms/xks/v1/keys/encrypt",            // no key id
		"/kms/xks/v1/key/foo/encrypt",         // keys, not key
		"/kms/xks/v2/keys/foo/encrypt",        // other version
		"/KMS/xks/v1/health",                  // case matters
		"/kms/xks/v1/keys/foo/bar/encrypt",    // extra segment
		"/kms/xks/v1/health/keys/foo/encrypt", // health is not a prefix here
		"kms/xks/v1/health",                   // relative
		"p/kms/xks/v1/health",                 // relative with prefix
		"//kms/xks/v1/health",                 // empty prefix segment
		"/p//kms/xks/v1/health",               // empty segment inside
		"//p/kms/xks/v1/keys/k/encrypt",       // leading empty segment
		"/p/q//kms/xks/v1/keys/k/encrypt",     // empty segment
		"/p%2Fq/kms/xks/v1/health",            // escaped slash in prefix
		"/p%20q/kms/xks/v1/health",            // escaped space in prefix
		"/p.q/kms/xks/v1/health",              // '.' not allowed in a prefix
		"/p q/kms/xks/v1/health",              // space
		"/../kms/xks/v1/health",               // dot segments
		"/" + strings.Repeat("p", MaxPrefixLen+1) + "/kms/xks/v1/health",
		"/kms/xks/v1/health?x=1",         // a query is not part of the path
		"/kms/xks/v1/keys/foo/encrypt;x", // matrix parameter
		"/kms/xks/v1/keys/foo/health",    // health has no key
	} {
		t.Run(path, func(t *testing.T) {
			r, err := ParsePath(path)
			checkErr(t, err, shared.CodeInvalidURIPath, "no XKS API at this URI path")
			if r != (Route{}) {
				t.Errorf("route = %+v, want zero", r)
			}
		})
	}
}

// TestParsePathInvalidKeyID: a well-formed path with an impossible key id is
// KeyNotFound, and the route still names the key store and operation.
func TestParsePathInvalidKeyID(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		path string
		want Route
	}{
		{"/kms/xks/v1/keys/a%20b/encrypt", Route{Op: OpEncrypt}},
		{"/p/kms/xks/v1/keys/a%2Fb/decrypt", Route{Prefix: "p", Op: OpDecrypt}},
		{"/p/kms/xks/v1/keys/%41/metadata", Route{Prefix: "p", Op: OpMetadata}}, // escaped 'A' is not unescaped
		{"/p/kms/xks/v1/keys/a~b/metadata", Route{Prefix: "p", Op: OpMetadata}},
		{"/p/kms/xks/v1/keys/a+b/metadata", Route{Prefix: "p", Op: OpMetadata}},
		{"/p/kms/xks/v1/keys/./encrypt", Route{Prefix: "p", Op: OpEncrypt}},
		{"/p/kms/xks/v1/keys/../encrypt", Route{Prefix: "p", Op: OpEncrypt}},
		{"/kms/xks/v1/keys/" + strings.Repeat("k", MaxKeyIDLen+1) + "/encrypt", Route{Op: OpEncrypt}},
		{"/kms/xks/v1/keys/k\xc3\xa9/encrypt", Route{Op: OpEncrypt}},
	} {
		t.Run(tc.path, func(t *testing.T) {
			r, err := ParsePath(tc.path)
			checkErr(t, err, shared.CodeKeyNotFound, "external key not found")
			if r != tc.want {
				t.Errorf("route = %+v, want %+v", r, tc.want)
			}
		})
	}
}

func TestValidPrefix(t *testing.T) {
	t.Parallel()
	for p, want := range map[string]bool{
		"":                             true,
		"a":                            true,
		"a/b/c":                        true,
		"Key_Store-1/x":                true,
		strings.Repeat("a", 116):       true,
		strings.Repeat("a", 117):       false,
		"/a":                           false,
		"a/":                           false,
		"a//b":                         false,
		"/":                            false,
		"a.b":                          false,
		"a b":                          false,
		"a%2Fb":                        false,
		"é":                            false,
		"a/kms/xks/v1":                 true,
		strings.Repeat("a/", 58) + "b": false, // 117 characters
	} {
		if got := ValidPrefix(p); got != want {
			t.Errorf("ValidPrefix(%q) = %v, want %v", p, got, want)
		}
	}
	if MaxPrefixLen != 116 || len(URIPath(strings.Repeat("a", MaxPrefixLen))) != MaxURIPathLen {
		t.Errorf("MaxPrefixLen = %d does not fill the 128-character XksProxyUriPath", MaxPrefixLen)
	}
}

func TestValidKeyID(t *testing.T) {
	t.Parallel()
	for id, want := range map[string]bool{
		"foo":                                  true,
		"b42c7fbf-de61-441c-ae24-123456789012": true,
		"a.b_c-D9":                             true,
		"...":                                  true,
		strings.Repeat("k", 128):               true,
		strings.Repeat("k", 129):               false,
		"":                                     false,
		".":                                    false,
		"..":                                   false,
		"a/b":                                  false,
		"a b":                                  false,
		"a%41":                                 false,
		"a:b":                                  false,
		"ä":                                    false,
	} {
		if got := ValidKeyID(id); got != want {
			t.Errorf("ValidKeyID(%q) = %v, want %v", id, got, want)
		}
	}
}

func TestURIPath(t *testing.T) {
	t.Parallel()
	for prefix, uriPath := range map[string]string{
		"":     "/kms/xks/v1",
		"path": "/path/kms/xks/v1",
		"keystores/4a0d79d6-1d1b-49fd-9dbe-799cb9c0fb3f": "/keystores/4a0d79d6-1d1b-49fd-9dbe-799cb9c0fb3f/kms/xks/v1",
	} {
		if got := URIPath(prefix); got != uriPath {
			t.Errorf("URIPath(%q) = %q, want %q", prefix, got, uriPath)
		}
		got, err := PrefixFromURIPath(uriPath)
		if err != nil || got != prefix {
			t.Errorf("PrefixFromURIPath(%q) = %q, %v, want %q", uriPath, got, err, prefix)
		}
	}
	for _, bad := range []string{
		"", "/kms/xks/v2", "/path/kms/xks/v1/", "path/kms/xks/v1", "//kms/xks/v1", "/a.b/kms/xks/v1",
		"/" + strings.Repeat("p", MaxPrefixLen+1) + "/kms/xks/v1",
	} {
		if _, err := PrefixFromURIPath(bad); shared.CodeOf(err) != shared.CodeValidation {
			t.Errorf("PrefixFromURIPath(%q) error = %v, want a validation error", bad, err)
		}
	}
}

func TestOpAPI(t *testing.T) {
	t.Parallel()
	for op, api := range map[Op]shared.API{
		OpMetadata: shared.APIXKSMetadata, OpEncrypt: shared.APIXKSEncrypt,
		OpDecrypt: shared.APIXKSDecrypt, OpHealth: shared.APIXKSHealth, "sign": "",
	} {
		if got := op.API(); got != api {
			t.Errorf("%q.API() = %q, want %q", op, got, api)
		}
	}
}
