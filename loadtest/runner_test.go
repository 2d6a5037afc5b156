package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/shared/api/xks"
	"github.com/sovkeys/sovkeys/shared/client/vsclient"
	"github.com/sovkeys/sovkeys/shared/client/xksclient"
)

// fakeXKS is an XKS endpoint over real TLS whose "encryption" is the
// identity, so decrypt answers can be checked. Every throttleEvery-th
// encrypt is answered with 429 ThrottlingException; block, when set, holds
// encrypts until the request is abandoned.
type fakeXKS struct {
	srv           *httptest.Server
	caFile        string
	encrypts      atomic.Int64
	decrypts      atomic.Int64
	throttleEvery int64
	block         chan struct{} // closed by the test when a request arrived
	unsigned      atomic.Int64
}

func newFakeXKS(t *testing.T) *fakeXKS {
	t.Helper()
	f := &fakeXKS{}
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
	f.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // clients hanging up at the end of a run
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	f.caFile = filepath.Join(t.TempDir(), "ca.pem")
	der := f.srv.Certificate().Raw
	if err := os.WriteFile(f.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fakeXKS) serve(w http.ResponseWriter, r *http.Request) {
	if !strings.HasPrefix(r.Header.Get("Authorization"), "AWS4-HMAC-SHA256 Credential=ABCDEFGHIJKLMNOPQRST/") {
		f.unsigned.Add(1)
	}
	body, _ := io.ReadAll(r.Body)
	w.Header().Set("Content-Type", "application/json")
	if !strings.HasPrefix(r.URL.Path, "/bench/kms/xks/v1/keys/k1/") {
		w.WriteHeader(http.StatusNotFound)
		_ = json.NewEncoder(w).Encode(xks.ErrorResponse{ErrorName: "KeyNotFoundException"})
		return
	}
	switch {
	case strings.HasSuffix(r.URL.Path, "/metadata"):
		_ = json.NewEncoder(w).Encode(xks.MetadataResponse{KeySpec: "AES_256", KeyUsage: []string{"ENCRYPT", "DECRYPT"}, KeyStatus: xks.KeyStatusEnabled})
	case strings.HasSuffix(r.URL.Path, "/encrypt"):
		n := f.encrypts.Add(1)
		if f.block != nil {
			f.block <- struct{}{}
			<-r.Context().Done()
			return
		}
		if f.throttleEvery > 0 && n%f.throttleEvery == 0 {
			w.WriteHeader(http.StatusTooManyRequests)
			_ = json.NewEncoder(w).Encode(xks.ErrorResponse{ErrorName: "ThrottlingException", ErrorMessage: "queue full"})
			return
		}
		var req xks.EncryptRequest
		_ = json.Unmarshal(body, &req)
		_ = json.NewEncoder(w).Encode(xks.EncryptResponse{Ciphertext: req.Plaintext,
			InitializationVector: make([]byte, xks.IVBytes), AuthenticationTag: make([]byte, xks.TagBytes)})
	case strings.HasSuffix(r.URL.Path, "/decrypt"):
		f.decrypts.Add(1)
		var req xks.DecryptRequest
		_ = json.Unmarshal(body, &req)
		_ = json.NewEncoder(w).Encode(xks.DecryptResponse{Plaintext: req.Ciphertext})
	default:
		w.WriteHeader(http.StatusNotFound)
		_ = json.NewEncoder(w).Encode(xks.ErrorResponse{ErrorName: "InvalidUriPathException"})
	}
}

// args are the flags of a run against f, capped at n requests, that would
// otherwise last a minute: every test below ends by count, not by time.
func (f *fakeXKS) args(n int, extra ...string) []string {
	return append([]string{"-url", f.srv.URL, "-ca", f.caFile, "-prefix", "/bench", "-key", "k1",
		"-access-key-id", "ABCDEFGHIJKLMNOPQRST", "-secret", "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0cw==",
		"-warmup", "0s", "-duration", "1m", "-max-requests", strconv.Itoa(n), "-size", "64"}, extra...)
}

func runReport(t *testing.T, ctx context.Context, args []string) (Report, int, string) {
	t.Helper()
	jsonFile := filepath.Join(t.TempDir(), "report.json")
	var out, errb bytes.Buffer
	code := run(ctx, append(args, "-json", jsonFile), func(string) string { return "" }, &out, &errb)
	var rep Report
	b, err := os.ReadFile(jsonFile)
	if err != nil {
		t.Fatalf("no JSON report (exit %d): %v\nstderr: %s", code, err, errb.String())
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	return rep, code, out.String()
}

func TestRunClosedLoopCountsErrorsByName(t *testing.T) {
	t.Parallel()
	f := newFakeXKS(t)
	f.throttleEvery = 5
	rep, code, text := runReport(t, t.Context(), f.args(40, "-concurrency", "4"))
	if rep.Requests != 40 || rep.ErrorCount != 8 || rep.Succeeded != 32 {
		t.Errorf("requests %d, errors %d, ok %d; want 40, 8, 32", rep.Requests, rep.ErrorCount, rep.Succeeded)
	}
	if len(rep.Errors) != 1 || rep.Errors[0].Kind != "HTTP 429 ThrottlingException" || rep.Errors[0].Count != 8 {
		t.Errorf("errors = %+v", rep.Errors)
	}
	if rep.Latency.Count != 32 || rep.Latency.Max <= 0 || rep.Latency.P50 > rep.Latency.P99 {
		t.Errorf("latency = %+v", rep.Latency)
	}
	if code != 1 || rep.Pass || !strings.HasPrefix(rep.Verdict, "NO GOAL") {
		t.Errorf("exit %d pass %v verdict %q", code, rep.Pass, rep.Verdict)
	}
	if !strings.Contains(rep.StoppedEarly, "max-requests") {
		t.Errorf("stoppedEarly = %q", rep.StoppedEarly)
	}
	for _, want := range []string{"throughput", "p99.9", "HTTP 429 ThrottlingException", "verdict"} {
		if !strings.Contains(text, want) {
			t.Errorf("text report lacks %q:\n%s", want, text)
		}
	}
	var ok, failed uint64
	for _, s := range rep.Timeline {
		ok, failed = ok+s.OK, failed+s.Errors
	}
	if ok != 32 || failed != 8 {
		t.Errorf("timeline holds %d ok and %d errors, want 32 and 8", ok, failed)
	}
	if n := f.unsigned.Load(); n != 0 {
		t.Errorf("%d requests without a SigV4 signature", n)
	}
}

func TestRunOpenLoopDecryptChecksPlaintext(t *testing.T) {
	t.Parallel()
	f := newFakeXKS(t)
	rep, _, _ := runReport(t, t.Context(), f.args(30, "-op", "decrypt", "-rate", "5000", "-pool", "8", "-aad", "16"))
	if rep.Mode != "open" || rep.OfferedRate != 5000 || rep.ScheduleLag == nil {
		t.Errorf("mode %q rate %v lag %v", rep.Mode, rep.OfferedRate, rep.ScheduleLag)
	}
	if rep.Requests != 30 || rep.ErrorCount != 0 {
		t.Errorf("requests %d errors %d (%+v)", rep.Requests, rep.ErrorCount, rep.Errors)
	}
	if rep.Scheduled != 30 || rep.Unsent != 0 {
		t.Errorf("scheduled %d unsent %d, want 30 and 0", rep.Scheduled, rep.Unsent)
	}
	if got := f.encrypts.Load(); got != 8 {
		t.Errorf("pool pre-encryption made %d encrypts, want 8", got)
	}
	if got := f.decrypts.Load(); got != 30 {
		t.Errorf("decrypts %d, want 30", got)
	}
}

func TestRunMixedSplitsOperations(t *testing.T) {
	t.Parallel()
	f := newFakeXKS(t)
	rep, _, _ := runReport(t, t.Context(), f.args(20, "-op", "mixed", "-concurrency", "2", "-pool", "4"))
	if rep.ByOp["encrypt"].Requests != 10 || rep.ByOp["decrypt"].Requests != 10 {
		t.Errorf("byOp = %+v", rep.ByOp)
	}
}

func TestRunGoalVerdicts(t *testing.T) {
	t.Parallel()
	f := newFakeXKS(t)
	// A capped run never passes a goal: it did not run its course.
	rep, code, _ := runReport(t, t.Context(), f.args(5, "-goal-rps", "1", "-goal-p99", "1h"))
	if code != 1 || rep.Pass || !strings.Contains(rep.Verdict, "stopped early") {
		t.Errorf("exit %d verdict %q", code, rep.Verdict)
	}
}

func TestRunInterrupted(t *testing.T) {
	t.Parallel()
	f := newFakeXKS(t)
	f.block = make(chan struct{})
	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		<-f.block // a request is in the server
		cancel()
	}()
	rep, _, _ := runReport(t, ctx, f.args(1000, "-concurrency", "1"))
	if rep.StoppedEarly != "interrupted" || rep.ErrorCount != 0 {
		t.Errorf("stoppedEarly %q, errors %+v", rep.StoppedEarly, rep.Errors)
	}
}

func TestRunRefusesBadTargetBeforeLoad(t *testing.T) {
	t.Parallel()
	f := newFakeXKS(t)
	var out, errb bytes.Buffer
	code := run(t.Context(), f.args(10, "-key", "missing", "-prefix", "/nope"), func(string) string { return "" }, &out, &errb)
	if code != 1 || !strings.Contains(errb.String(), "preflight") {
		t.Errorf("exit %d stderr %q", code, errb.String())
	}
	if f.encrypts.Load() != 0 {
		t.Error("load was sent after a failed preflight")
	}
}

func TestClassify(t *testing.T) {
	t.Parallel()
	tests := []struct {
		err  error
		want string
	}{
		{&xksclient.APIError{Status: 429, Name: "ThrottlingException"}, "HTTP 429 ThrottlingException"},
		{fmt.Errorf("wrapped: %w", &xksclient.APIError{Status: 502}), "HTTP 502 (no errorName)"},
		{fmt.Errorf("%w: %w", errCutOff, context.DeadlineExceeded), "cut off at run time limit"},
		{errBadResponse, "malformed response"},
		{&vsclient.APIError{Status: 403, Message: "tenant disabled"}, "HTTP 403 Forbidden"},
		{fmt.Errorf("post: %w", vsclient.ErrBadSignature), "bad signature"},
		{fmt.Errorf("%w: oaep", errUnwrap), "unwrap failed"},
		{errSecretMismatch, "secret mismatch"},
		{errMismatch, "plaintext mismatch"},
		{fmt.Errorf("post: %w", context.DeadlineExceeded), "timeout"},
		{fmt.Errorf("post: %w", io.ErrUnexpectedEOF), "connection closed (EOF)"},
		{errors.New("something else"), "transport error"},
	}
	for _, tc := range tests {
		if got := classify(tc.err); got != tc.want {
			t.Errorf("classify(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

func TestVerdict(t *testing.T) {
	t.Parallel()
	closed := Config{Concurrency: 32, GoalRPS: 1800, GoalP99: 25 * time.Millisecond}
	open := Config{Rate: 1800, GoalRPS: 1800, GoalP99: 25 * time.Millisecond}
	rep := func(rps, p99 float64, errs uint64) Report {
		return Report{Throughput: rps, ErrorCount: errs, WindowSeconds: 60, Latency: Latency{Count: 1000, P99: p99}}
	}
	tests := []struct {
		name string
		cfg  Config
		rep  Report
		pass bool
	}{
		{"closed meets", closed, rep(5000, 10, 0), true},
		{"closed slow", closed, rep(1700, 10, 0), false},
		{"closed tail", closed, rep(5000, 30, 0), false},
		{"closed errors", closed, rep(5000, 10, 1), false},
		{"open within slack", open, rep(1795, 10, 0), true},
		{"open behind", open, rep(1500, 10, 0), false},
		{"open offered below goal", Config{Rate: 1000, GoalRPS: 1800}, rep(1000, 1, 0), false},
		{"no samples", closed, Report{Throughput: 5000}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pass, text := verdict(tc.cfg, tc.rep)
			if pass != tc.pass {
				t.Errorf("pass = %v (%s)", pass, text)
			}
			if pass != strings.HasPrefix(text, "PASS") {
				t.Errorf("verdict text %q disagrees with pass=%v", text, pass)
			}
		})
	}
}

func TestScheduledIn(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  Config
		want uint64
	}{
		{"kms rate for a minute after warmup", Config{Rate: 1800, Warmup: 5 * time.Second, Duration: time.Minute, MaxRequests: 1 << 40}, 108000},
		{"slots at 0, 1/3 and 2/3 s", Config{Rate: 3, Duration: time.Second, MaxRequests: 100}, 3},
		{"fractional rate", Config{Rate: 0.5, Warmup: time.Second, Duration: 4 * time.Second, MaxRequests: 100}, 2}, // slots at 2 s and 4 s
		{"cap inside the window", Config{Rate: 100, Warmup: time.Second, Duration: 10 * time.Second, MaxRequests: 150}, 50},
		{"cap inside warmup", Config{Rate: 100, Warmup: time.Second, Duration: 10 * time.Second, MaxRequests: 50}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := scheduledIn(tc.cfg); got != tc.want {
				t.Errorf("scheduledIn = %d, want %d", got, tc.want)
			}
		})
	}
}
