package auditlog

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sovkeys/sovkeys/shared"
)

func TestCanonical(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		in   any
		want string
	}{
		{"sorted keys, no whitespace", map[string]any{"b": 1, "a": "x", "c": true}, `{"a":"x","b":1,"c":true}`},
		{"nested", map[string]any{"z": map[string]any{"y": "1", "x": int64(-2)}}, `{"z":{"x":-2,"y":"1"}}`},
		{"escapes", map[string]any{"s": "q\"b\\\b\f\n\r\t\x01\x1f"}, `{"s":"q\"b\\\b\f\n\r\t\u0001\u001f"}`},
		{"no html or line-separator escaping", map[string]any{"s": "<>&\u2028\u2029é€😀"}, "{\"s\":\"<>&\u2028\u2029é€😀\"}"},
		// RFC 8785 sorts by UTF-16 code units: U+1F600 (D83D DE00) before U+FB33.
		{"utf-16 order", map[string]any{"\uFB33": 1, "\U0001F600": 2, "a": 3}, "{\"a\":3,\"\U0001F600\":2,\"\uFB33\":1}"},
		{"string map", map[string]string{"k": "v"}, `{"k":"v"}`},
		{"largest safe integer", map[string]any{"n": uint64(1<<53 - 1)}, `{"n":9007199254740991}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Canonical(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Fatalf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
	for _, bad := range []any{
		map[string]any{"f": 1.5},
		map[string]any{"n": uint64(1 << 53)},
		map[string]any{"s": "\xff"},
		map[string]any{"a": []any{1}},
	} {
		if _, err := Canonical(bad); !errors.Is(err, ErrFormat) {
			t.Errorf("Canonical(%v) = %v, want ErrFormat", bad, err)
		}
	}
}

func testEvent(i int) *shared.AuditEvent {
	return &shared.AuditEvent{
		Version: shared.AuditEventVersion, RequestID: fmt.Sprintf("req-%d", i), Kind: shared.AuditKindTenant,
		Scope: "vpc-1", API: shared.APIVSGenerate, Service: "keyworker",
		Start: time.Date(2026, 11, 23, 10, 0, 0, 123456789, time.UTC), End: time.Date(2026, 11, 23, 10, 0, 0, 200000000, time.UTC),
		CallerType: "instance", CallerID: "i-0abc", SourceIP: "10.0.0.7", Result: shared.ResultSuccess,
		TraceID: "0af7651916cd43dd8448eb211c80319c", Params: map[string]string{"volume_uuid": "u-1", "account": "123456789012"},
	}
}

func TestRecordRoundTrip(t *testing.T) {
	t.Parallel()
	r := FromEvent(testEvent(1), 1, Genesis)
	data, err := r.Encode()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"caller":{"account":"123456789012","id":"i-0abc","source_ip":"10.0.0.7","type":"instance"},` +
		`"end":"2026-11-23T10:00:00.2Z","kind":"tenant","operation":{"api":"vs.generate","params":{"account":"123456789012","volume_uuid":"u-1"}},` +
		`"prev":"0000000000000000000000000000000000000000000000000000000000000000","request_id":"req-1","result":"success",` +
		`"scope":"vpc-1","seq":1,"service":"keyworker","start":"2026-11-23T10:00:00.123456789Z","trace_id":"0af7651916cd43dd8448eb211c80319c","v":1}`
	if string(data) != want {
		t.Fatalf("record encoding changed:\ngot  %s\nwant %s", data, want)
	}
	back, err := ParseRecord(data)
	if err != nil {
		t.Fatal(err)
	}
	if back.DedupeID() != DedupeID("keyworker", "req-1") || back.Seq != 1 {
		t.Fatalf("round trip: %+v", back)
	}
	for name, mutate := range map[string]func([]byte) []byte{
		"whitespace":    func(b []byte) []byte { return bytes.Replace(b, []byte(`,"v":1`), []byte(`, "v":1`), 1) },
		"unsorted":      func(b []byte) []byte { return bytes.Replace(b, []byte(`{"caller"`), []byte(`{"v":1,"caller"`), 1) },
		"unknown field": func(b []byte) []byte { return bytes.Replace(b, []byte(`"v":1}`), []byte(`"v":1,"x":"y"}`), 1) },
		"empty optional": func(b []byte) []byte {
			return bytes.Replace(b, []byte(`"trace_id"`), []byte(`"reason":"","trace_id"`), 1)
		},
		"float":           func(b []byte) []byte { return bytes.Replace(b, []byte(`"seq":1`), []byte(`"seq":1.0`), 1) },
		"escaped slash":   func(b []byte) []byte { return bytes.Replace(b, []byte(`vs.generate`), []byte(`vs\u002egenerate`), 1) },
		"upper-case name": func(b []byte) []byte { return bytes.Replace(b, []byte(`"seq"`), []byte(`"Seq"`), 1) },
	} {
		if _, err := ParseRecord(mutate(bytes.Clone(data))); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: ParseRecord = %v, want ErrFormat", name, err)
		}
	}
}

func TestFromEventCleansText(t *testing.T) {
	t.Parallel()
	ev := testEvent(1)
	ev.Reason = strings.Repeat("é", MaxFieldLen) + "\xff"
	r := FromEvent(ev, 3, Genesis)
	if len(r.Reason) > MaxFieldLen || !strings.HasSuffix(r.Reason, "...") {
		t.Fatalf("reason not clipped: %d bytes", len(r.Reason))
	}
	if _, err := r.Encode(); err != nil {
		t.Fatal(err)
	}
}

func TestScopeNames(t *testing.T) {
	t.Parallel()
	s := Scope{Kind: shared.AuditKindXKS, ID: "a/b"}
	if got := s.RecordKey(42); got != "xks/YS9i/00000000000000000042.json" {
		t.Fatalf("RecordKey = %s", got)
	}
	if got := s.CheckpointKey(7); got != "xks/YS9i/checkpoints/00000000000000000007.json" {
		t.Fatalf("CheckpointKey = %s", got)
	}
	for _, subj := range []string{s.RecordSubject(), s.CheckpointSubject()} {
		back, cp, err := ScopeOfSubject(subj)
		if err != nil || back != s || cp != (subj == s.CheckpointSubject()) {
			t.Fatalf("ScopeOfSubject(%s) = %v %v %v", subj, back, cp, err)
		}
	}
	op := Scope{Kind: shared.AuditKindOperator}
	if op.RecordSubject() != "sovkeys.auditlog.operator._" {
		t.Fatalf("operator subject %s", op.RecordSubject())
	}
	if _, _, err := ScopeOfSubject("sovkeys.auditlog.tenant"); err == nil {
		t.Fatal("subject without token accepted")
	}
	if n, ok := ParseSeqName("00000000000000000042.json"); !ok || n != 42 {
		t.Fatal("ParseSeqName")
	}
	for _, bad := range []string{"42.json", "00000000000000000000.json", "0000000000000000004x.json"} {
		if _, ok := ParseSeqName(bad); ok {
			t.Errorf("ParseSeqName(%q) accepted", bad)
		}
	}
}

// memBucket is an in-memory Bucket for verification tests.
type memBucket struct {
	mu      sync.Mutex
	objects map[string][]byte
}

func newMemBucket() *memBucket { return &memBucket{objects: map[string][]byte{}} }

func (m *memBucket) String() string { return "mem" }

func (m *memBucket) Put(_ context.Context, key string, data []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if old, ok := m.objects[key]; ok {
		if bytes.Equal(old, data) {
			return nil
		}
		return ErrConflict
	}
	m.objects[key] = bytes.Clone(data)
	return nil
}

func (m *memBucket) Get(_ context.Context, key string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, ok := m.objects[key]
	if !ok {
		return nil, ErrNotFound
	}
	return d, nil
}

func (m *memBucket) List(_ context.Context, dir string, fn func(string) error) error {
	m.mu.Lock()
	var names []string
	for k := range m.objects {
		if rest, ok := strings.CutPrefix(k, dir+"/"); ok && !strings.Contains(rest, "/") {
			names = append(names, rest)
		}
	}
	m.mu.Unlock()
	slices.Sort(names)
	for _, n := range names {
		if err := fn(n); err != nil {
			return err
		}
	}
	return nil
}

// softSigner signs checkpoints in software (the HSM path is tested in
// services/keyworker and end to end).
type softSigner struct {
	key  *ecdsa.PrivateKey
	spki []byte
}

func newSoftSigner(t testing.TB) *softSigner {
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	spki, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return &softSigner{key: k, spki: spki}
}

func (s *softSigner) checkpoint(t testing.TB, sc Scope, seq uint64, h Hash) []byte {
	cp := NewCheckpoint(sc, seq, h, time.Date(2026, 11, 23, 10, 0, 1, 0, time.UTC), s.spki)
	msg, err := cp.SignedBytes()
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256(msg)
	sig, err := ecdsa.SignASN1(rand.Reader, s.key, d[:])
	if err != nil {
		t.Fatal(err)
	}
	cp.SetSignature(sig)
	data, err := cp.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// writeLog stores n records of sc and checkpoints at the given sequences.
func writeLog(t testing.TB, b Bucket, signer *softSigner, sc Scope, n int, cps ...uint64) {
	t.Helper()
	ctx := context.Background()
	prev := Genesis
	for i := 1; i <= n; i++ {
		ev := testEvent(i)
		ev.Kind, ev.Scope = sc.Kind, sc.ID
		r := FromEvent(ev, uint64(i), prev)
		data, err := r.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Put(ctx, sc.RecordKey(uint64(i)), data); err != nil {
			t.Fatal(err)
		}
		prev = HashOf(data)
		if slices.Contains(cps, uint64(i)) {
			if err := b.Put(ctx, sc.CheckpointKey(uint64(i)), signer.checkpoint(t, sc, uint64(i), prev)); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// The direct record encoder and the generic JCS encoder agree.
func TestRecordEncodeMatchesCanonical(t *testing.T) {
	t.Parallel()
	texts := []string{"", "a", "é", "\U0001F600", "\uFB33", "q\"\\\n\x01", "<&>", "\u2028"}
	pick := func(i, j int) string { return texts[(i*7+j*3)%len(texts)] }
	for i := range 200 {
		r := Record{
			Version: Version, Kind: "tenant", Scope: pick(i, 1), Seq: uint64(i + 1), Prev: Genesis.String(),
			Service: "svc" + pick(i, 2), RequestID: "r" + pick(i, 3), TraceID: pick(i, 4),
			Start: "2026-11-23T10:00:00Z", End: "2026-11-23T10:00:01Z",
			Caller:    Caller{Type: pick(i, 5), ID: pick(i, 6), Principal: pick(i, 7), SourceIP: pick(i, 8), Account: pick(i, 9)},
			Operation: Operation{API: "x", KeyID: pick(i, 10), KMSRequestID: pick(i, 11), KMSOperation: pick(i, 12)},
			Result:    "success", Code: pick(i, 13), Reason: pick(i, 14),
		}
		if i%3 == 0 {
			r.Operation.Params = map[string]string{pick(i, 15): pick(i, 16), "z" + pick(i, 17): "1", "\U0001F600": "e", "\uFB33": "f"}
		}
		fast, err := r.Encode()
		if err != nil {
			t.Fatal(err)
		}
		generic, err := Canonical(r.value())
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(fast, generic) {
			t.Fatalf("record %d:\nfast    %s\ngeneric %s", i, fast, generic)
		}
		if _, err := ParseRecord(fast); err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
	}
}
