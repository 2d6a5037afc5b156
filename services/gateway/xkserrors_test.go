package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/api/xks"
)

func TestWriteXKSError(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		err     error
		status  int
		errName string
		message string
		allow   string
	}{
		{"validation", shared.NewError(shared.CodeValidation, "xks: plaintext is required"),
			400, "ValidationException", "xks: plaintext is required", ""},
		{"wrapped", fmt.Errorf("decrypt: %w", shared.NewError(shared.CodeInvalidCiphertext, "xks: authentication failed")),
			400, "InvalidCiphertextException", "xks: authentication failed", ""},
		{"sentinel", shared.ErrThrottling, 429, "ThrottlingException", "sovkeys: throttled", ""},
		{"sentinel wrapped", fmt.Errorf("%w: pool kw1 full", shared.ErrThrottling), 429, "ThrottlingException", "sovkeys: throttled", ""},
		{"method not allowed", shared.ErrMethodNotAllowed, 405, "ValidationException", "sovkeys: method not allowed", "POST"},
		{"invalid uri path", shared.ErrInvalidURIPath, 404, "InvalidUriPathException", "sovkeys: invalid uri path", ""},
		{"plain error hides details", errors.New("pkcs11: CKR_DEVICE_ERROR at 0xdeadbeef"),
			500, "InternalException", "sovkeys: internal error", ""},
		{"unknown code", &shared.Error{Code: "future_code", Message: "something new"},
			500, "InternalException", "something new", ""},
		{"non-printable message", shared.NewError(shared.CodeValidation, "bad\tfield\n\x00é\u2028end"),
			400, "ValidationException", "bad?field????end", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			writeXKSError(rec, tc.err)
			res := rec.Result()
			if res.StatusCode != tc.status {
				t.Errorf("status = %d, want %d", res.StatusCode, tc.status)
			}
			if ct := res.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q", ct)
			}
			if got := res.Header.Get("Allow"); got != tc.allow {
				t.Errorf("Allow = %q, want %q", got, tc.allow)
			}
			if got := res.Header.Get("Content-Length"); got != strconv.Itoa(rec.Body.Len()) {
				t.Errorf("Content-Length = %q, body has %d bytes", got, rec.Body.Len())
			}
			var body map[string]string
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
				t.Fatalf("body %q: %v", rec.Body, err)
			}
			if len(body) != 2 || body["errorName"] != tc.errName || body["errorMessage"] != tc.message {
				t.Errorf("body = %v, want errorName %q errorMessage %q", body, tc.errName, tc.message)
			}
		})
	}
}

func TestXKSErrorMessage(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 600)
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"plain ascii ~!", "plain ascii ~!"},
		{"tab\there", "tab?here"},
		{"del\x7f", "del?"},
		{"héllo", "h?llo"},
		{"\xff\xfe", "??"},
		{long, long[:511]},
		{strings.Repeat("é", 600), strings.Repeat("?", 511)},
	} {
		got := xksErrorMessage(tc.in)
		if got != tc.want {
			t.Errorf("xksErrorMessage(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if len(got) >= 512 {
			t.Errorf("xksErrorMessage returned %d characters", len(got))
		}
	}
}

func TestWriteJSON(t *testing.T) {
	t.Parallel()
	rec := httptest.NewRecorder()
	writeJSON(rec, http.StatusOK, xks.DecryptResponse{Plaintext: []byte("Hello World!")})
	res := rec.Result()
	if res.StatusCode != 200 || rec.Body.String() != `{"plaintext":"SGVsbG8gV29ybGQh"}` {
		t.Errorf("writeJSON = %d %s", res.StatusCode, rec.Body)
	}
	for h, want := range map[string]string{
		"Content-Type": "application/json", "Cache-Control": "no-store",
		"X-Content-Type-Options": "nosniff", "Content-Length": "32",
	} {
		if got := res.Header.Get(h); got != want {
			t.Errorf("%s = %q, want %q", h, got, want)
		}
	}

	// A value that cannot be encoded becomes a 500 both APIs can read.
	rec = httptest.NewRecorder()
	writeJSON(rec, http.StatusOK, map[string]any{"c": make(chan int)})
	if rec.Code != http.StatusInternalServerError {
		t.Errorf("status = %d, want 500", rec.Code)
	}
	var body map[string]string
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	if body["errorName"] != "InternalException" || body["message"] == "" || body["errorMessage"] == "" {
		t.Errorf("fallback body = %v", body)
	}
}
