package xks

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/sovkeys/sovkeys/shared"
)

// TestResponseJSON checks the wire names of every response against the
// specification's response examples.
func TestResponseJSON(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		v    any
		want string
	}{
		"metadata": {
			MetadataResponse{KeySpec: KeySpecAES256, KeyUsage: []string{KeyUsageEncrypt, KeyUsageDecrypt}, KeyStatus: KeyStatusEnabled},
			`{"keySpec":"AES_256","keyUsage":["ENCRYPT","DECRYPT"],"keyStatus":"ENABLED"}`,
		},
		"metadata, no usages": {
			MetadataResponse{KeySpec: KeySpecAES256, KeyStatus: KeyStatusDisabled},
			`{"keySpec":"AES_256","keyUsage":[],"keyStatus":"DISABLED"}`,
		},
		"metadata pointer": {
			&MetadataResponse{KeySpec: KeySpecAES256, KeyStatus: KeyStatusEnabled},
			`{"keySpec":"AES_256","keyUsage":[],"keyStatus":"ENABLED"}`,
		},
		"decrypt": {DecryptResponse{Plaintext: []byte("Hello World!")}, `{"plaintext":"SGVsbG8gV29ybGQh"}`},
		"encrypt without optional fields": {
			EncryptResponse{AuthenticationTag: []byte{1}, Ciphertext: []byte{2}, InitializationVector: []byte{3}},
			`{"authenticationTag":"AQ==","ciphertext":"Ag==","initializationVector":"Aw=="}`,
		},
		"health": {
			HealthResponse{XksProxyFleetSize: 2, XksProxyVendor: "Acme Corp", XksProxyModel: "Acme XKS Proxy 1.0",
				EkmVendor: "Thales Group", EkmFleetDetails: []EkmFleetDetail{
					{ID: "hsm-id-1", Model: "Luna 5.0", HealthStatus: HealthDegraded},
					{ID: "hsm-id-2", Model: "Luna 5.1", HealthStatus: HealthActive},
				}},
			`{"xksProxyFleetSize":2,"xksProxyVendor":"Acme Corp","xksProxyModel":"Acme XKS Proxy 1.0","ekmVendor":"Thales Group",` +
				`"ekmFleetDetails":[{"id":"hsm-id-1","model":"Luna 5.0","healthStatus":"DEGRADED"},` +
				`{"id":"hsm-id-2","model":"Luna 5.1","healthStatus":"ACTIVE"}]}`,
		},
		"error": {
			ErrorResponse{ErrorName: ErrorNameInvalidCiphertext, ErrorMessage: "bad tag"},
			`{"errorName":"InvalidCiphertextException","errorMessage":"bad tag"}`,
		},
		"error without message": {ErrorResponse{ErrorName: ErrorNameInternal}, `{"errorName":"InternalException"}`},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := json.Marshal(tc.v)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("JSON =\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}

func TestResponseValidate(t *testing.T) {
	t.Parallel()
	okEncrypt := func() EncryptResponse {
		return EncryptResponse{Ciphertext: []byte{1}, InitializationVector: make([]byte, IVBytes), AuthenticationTag: make([]byte, TagBytes)}
	}
	okMetadata := func() MetadataResponse {
		return MetadataResponse{KeySpec: KeySpecAES256, KeyUsage: []string{KeyUsageEncrypt, KeyUsageDecrypt}, KeyStatus: KeyStatusEnabled}
	}
	okHealth := func() HealthResponse {
		return HealthResponse{XksProxyFleetSize: 1, XksProxyVendor: "sovkeys", XksProxyModel: "sovkeys 0.1", EkmVendor: "SoftHSM",
			EkmFleetDetails: []EkmFleetDetail{{ID: "hsm-1", Model: "SoftHSMv2 2.6", HealthStatus: HealthActive}}}
	}
	type validator interface{ Validate() error }
	for _, tc := range []struct {
		name string
		v    validator
		msg  string // "" when valid
	}{
		{"encrypt ok", ptr(okEncrypt()), ""},
		{"encrypt 16-byte IV", func() validator { r := okEncrypt(); r.InitializationVector = make([]byte, 16); return &r }(), ""},
		{"encrypt empty ciphertext", func() validator { r := okEncrypt(); r.Ciphertext = nil; return &r }(), "ciphertext is empty"},
		{"encrypt bad IV", func() validator { r := okEncrypt(); r.InitializationVector = make([]byte, 8); return &r }(), "initializationVector"},
		{"encrypt bad tag", func() validator { r := okEncrypt(); r.AuthenticationTag = make([]byte, 12); return &r }(), "authenticationTag"},
		{"encrypt long metadata", func() validator { r := okEncrypt(); r.CiphertextMetadata = make([]byte, 21); return &r }(), "ciphertextMetadata"},
		{"metadata ok", ptr(okMetadata()), ""},
		{"metadata no keySpec", func() validator { r := okMetadata(); r.KeySpec = ""; return &r }(), "keySpec"},
		{"metadata 11 usages", func() validator { r := okMetadata(); r.KeyUsage = make([]string, 11); return &r }(), "keyUsage"},
		{"metadata bad status", func() validator { r := okMetadata(); r.KeyStatus = "PENDING"; return &r }(), "keyStatus"},
		{"health ok", ptr(okHealth()), ""},
		{"health fleet size 0", func() validator { r := okHealth(); r.XksProxyFleetSize = 0; return &r }(), "xksProxyFleetSize"},
		{"health no vendor", func() validator { r := okHealth(); r.EkmVendor = ""; return &r }(), "ekmVendor"},
		{"health no details", func() validator { r := okHealth(); r.EkmFleetDetails = nil; return &r }(), "ekmFleetDetails"},
		{"health 11 details", func() validator {
			r := okHealth()
			r.EkmFleetDetails = make([]EkmFleetDetail, 11)
			return &r
		}(), "ekmFleetDetails"},
		{"health detail without id", func() validator { r := okHealth(); r.EkmFleetDetails[0].ID = ""; return &r }(), "id and model"},
		{"health bad status", func() validator { r := okHealth(); r.EkmFleetDetails[0].HealthStatus = "OK"; return &r }(), "healthStatus"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.v.Validate()
			if tc.msg == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if shared.CodeOf(err) != shared.CodeInternal || !strings.Contains(shared.MessageOf(err), tc.msg) {
				t.Errorf("Validate = %v, want an internal error mentioning %q", err, tc.msg)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }
