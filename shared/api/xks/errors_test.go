package xks

import (
	"testing"

	"github.com/sovkeys/sovkeys/shared"
)

// TestStatusOf checks every row of the error table against the
// specification's error codes.
func TestStatusOf(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		code   shared.Code
		status int
		name   string
	}{
		{shared.CodeValidation, 400, "ValidationException"},
		{shared.CodeInvalidState, 400, "InvalidStateException"},
		{shared.CodeInvalidCiphertext, 400, "InvalidCiphertextException"},
		{shared.CodeInvalidKeyUsage, 400, "InvalidKeyUsageException"},
		{shared.CodeAuthenticationFailed, 401, "AuthenticationFailedException"},
		{shared.CodeAccessDenied, 403, "AccessDeniedException"},
		{shared.CodeKeyNotFound, 404, "KeyNotFoundException"},
		{shared.CodeInvalidURIPath, 404, "InvalidUriPathException"},
		{shared.CodeMethodNotAllowed, 405, "ValidationException"},
		{shared.CodeThrottling, 429, "ThrottlingException"},
		{shared.CodeUnsupportedOperation, 501, "UnsupportedOperationException"},
		{shared.CodeDependencyTimeout, 503, "DependencyTimeoutException"},
		{shared.CodeInternal, 500, "InternalException"},
		{"no_such_code", 500, "InternalException"},
		{"", 500, "InternalException"},
	} {
		t.Run(string(tc.code), func(t *testing.T) {
			status, name := StatusOf(tc.code)
			if status != tc.status || name != tc.name {
				t.Errorf("StatusOf(%q) = %d %s, want %d %s", tc.code, status, name, tc.status, tc.name)
			}
		})
	}
	if len(Errors) != 13 {
		t.Errorf("table has %d rows, want one per shared code (13)", len(Errors))
	}
}
