package auditlog

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/sovkeys/sovkeys/shared"
)

// Hash is the SHA-256 of a record's canonical bytes.
type Hash [32]byte

// Genesis is the prev hash of record 1: 32 zero bytes.
var Genesis Hash

// String is lowercase hex.
func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// ParseHash reads 64 lowercase hex digits.
func ParseHash(s string) (Hash, error) {
	var h Hash
	if len(s) != 64 || strings.ToLower(s) != s {
		return h, fmt.Errorf("%w: hash %q is not 64 lowercase hex digits", ErrFormat, s)
	}
	if _, err := hex.Decode(h[:], []byte(s)); err != nil {
		return h, fmt.Errorf("%w: hash %q: %v", ErrFormat, s, err)
	}
	return h, nil
}

// HashOf returns the SHA-256 of canonical bytes.
func HashOf(canonical []byte) Hash { return sha256.Sum256(canonical) }

// Caller is who asked for the operation.
type Caller struct {
	Type      string `json:"type,omitempty"` // "sigv4", "instance", "operator", ...
	ID        string `json:"id,omitempty"`   // access key id, instance id, user@host
	Principal string `json:"principal,omitempty"`
	SourceIP  string `json:"source_ip,omitempty"`
	Account   string `json:"account,omitempty"`
}

// Operation is what was asked. Params never hold secrets or plaintext:
// sizes, algorithm names, key ids.
type Operation struct {
	API          string            `json:"api"`
	KeyID        string            `json:"key_id,omitempty"`
	KMSRequestID string            `json:"kms_request_id,omitempty"`
	KMSOperation string            `json:"kms_operation,omitempty"`
	Params       map[string]string `json:"params,omitempty"`
}

// Record is one numbered entry of a scope's log. Every field is a string,
// an integer or an object of those; optional strings are omitted when empty.
type Record struct {
	Version   int       `json:"v"`
	Kind      string    `json:"kind"`
	Scope     string    `json:"scope"`
	Seq       uint64    `json:"seq"`
	Prev      string    `json:"prev"` // hex SHA-256 of record Seq-1 (Genesis for 1)
	Service   string    `json:"service"`
	RequestID string    `json:"request_id"`
	TraceID   string    `json:"trace_id,omitempty"`
	Start     string    `json:"start"` // RFC 3339, UTC, nanoseconds when non-zero
	End       string    `json:"end"`
	Caller    Caller    `json:"caller"`
	Operation Operation `json:"operation"`
	Result    string    `json:"result"` // success | failure | denied | expired
	Code      string    `json:"code,omitempty"`
	Reason    string    `json:"reason,omitempty"`
}

// DedupeID identifies the event a record was made from within its scope:
// the emitting service and the request id. A service emits at most one
// event per request, and gateway, authn and keyworker may each emit one.
func (r *Record) DedupeID() string { return DedupeID(r.Service, r.RequestID) }

// DedupeID joins service and request id.
func DedupeID(service, requestID string) string { return service + "\x00" + requestID }

func formatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// MaxFieldLen bounds every text field of a record (bytes); longer text is
// cut at a character boundary and ends in "...".
const MaxFieldLen = 4096

// clean makes s valid UTF-8 (invalid bytes become U+FFFD) and clips it to
// MaxFieldLen, so every record has a canonical form and a bounded size.
func clean(s, bad string) string {
	s = strings.ToValidUTF8(s, bad)
	if len(s) <= MaxFieldLen {
		return s
	}
	cut := MaxFieldLen - 3
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

// FromEvent builds the record of ev at seq after prev, with clean text.
func FromEvent(ev *shared.AuditEvent, seq uint64, prev Hash) Record {
	v := clean
	const bad = "\uFFFD"
	var params map[string]string
	if len(ev.Params) > 0 {
		params = make(map[string]string, len(ev.Params))
		for k, p := range ev.Params {
			params[v(k, bad)] = v(p, bad)
		}
	}
	return Record{
		Version: Version, Kind: v(ev.Kind, bad), Scope: v(ev.Scope, bad), Seq: seq, Prev: prev.String(),
		Service: v(ev.Service, bad), RequestID: v(ev.RequestID, bad), TraceID: v(ev.TraceID, bad),
		Start: formatTime(ev.Start), End: formatTime(ev.End),
		Caller: Caller{
			Type: v(ev.CallerType, bad), ID: v(ev.CallerID, bad), Principal: v(ev.Principal, bad),
			SourceIP: v(ev.SourceIP, bad), Account: v(ev.Params["account"], bad),
		},
		Operation: Operation{
			API: v(string(ev.API), bad), KeyID: v(ev.KeyID, bad),
			KMSRequestID: v(ev.KMSRequestID, bad), KMSOperation: v(ev.KMSOperation, bad), Params: params,
		},
		Result: v(ev.Result, bad), Code: v(string(ev.Code), bad), Reason: v(ev.Reason, bad),
	}
}

// Shrink makes a record fit one entry of the transparency log
// (MaxEntrySize): parameters are replaced by their count and every text
// field is cut to 1,024 bytes. It is used only when the record would not
// fit otherwise (thousands of parameters), so the event is still recorded.
func (r *Record) Shrink() {
	cut := func(s string) string {
		if len(s) <= 1024 {
			return s
		}
		i := 1021
		for i > 0 && !utf8.RuneStart(s[i]) {
			i--
		}
		return s[:i] + "..."
	}
	if n := len(r.Operation.Params); n > 0 {
		r.Operation.Params = map[string]string{"omitted_params": strconv.Itoa(n)}
	}
	for _, f := range []*string{&r.Service, &r.RequestID, &r.TraceID, &r.Caller.Type, &r.Caller.ID,
		&r.Caller.Principal, &r.Caller.SourceIP, &r.Caller.Account, &r.Operation.API, &r.Operation.KeyID,
		&r.Operation.KMSRequestID, &r.Operation.KMSOperation, &r.Result, &r.Code, &r.Reason} {
		*f = cut(*f)
	}
}

// putNonEmpty adds s under k unless it is empty (optional members).
func putNonEmpty(m map[string]any, k, s string) {
	if s != "" {
		m[k] = s
	}
}

// value is the record as a generic JSON value, optional members omitted.
func (r *Record) value() map[string]any {
	caller := map[string]any{}
	putNonEmpty(caller, "type", r.Caller.Type)
	putNonEmpty(caller, "id", r.Caller.ID)
	putNonEmpty(caller, "principal", r.Caller.Principal)
	putNonEmpty(caller, "source_ip", r.Caller.SourceIP)
	putNonEmpty(caller, "account", r.Caller.Account)
	op := map[string]any{"api": r.Operation.API}
	putNonEmpty(op, "key_id", r.Operation.KeyID)
	putNonEmpty(op, "kms_request_id", r.Operation.KMSRequestID)
	putNonEmpty(op, "kms_operation", r.Operation.KMSOperation)
	if len(r.Operation.Params) > 0 {
		p := make(map[string]any, len(r.Operation.Params))
		for k, v := range r.Operation.Params {
			p[k] = v
		}
		op["params"] = p
	}
	m := map[string]any{
		"v": r.Version, "kind": r.Kind, "scope": r.Scope, "seq": r.Seq, "prev": r.Prev,
		"service": r.Service, "request_id": r.RequestID, "start": r.Start, "end": r.End,
		"caller": caller, "operation": op, "result": r.Result,
	}
	putNonEmpty(m, "trace_id", r.TraceID)
	putNonEmpty(m, "code", r.Code)
	putNonEmpty(m, "reason", r.Reason)
	return m
}

// Encode returns the record's canonical bytes: what is stored, exported and
// hashed. It writes the members in their canonical order directly (the
// generic Canonical of the same value gives the same bytes; a test holds
// the two together).
func (r *Record) Encode() ([]byte, error) {
	if r.Seq > maxSafeInt {
		return nil, fmt.Errorf("%w: sequence %d exceeds 2^53-1", ErrFormat, r.Seq)
	}
	w := recordWriter{b: bytes.NewBuffer(make([]byte, 0, 640))}
	w.b.WriteString(`{"caller":{`)
	w.first = true
	w.opt("account", r.Caller.Account)
	w.opt("id", r.Caller.ID)
	w.opt("principal", r.Caller.Principal)
	w.opt("source_ip", r.Caller.SourceIP)
	w.opt("type", r.Caller.Type)
	w.b.WriteByte('}')
	w.first = false
	w.opt("code", r.Code)
	w.str("end", r.End)
	w.str("kind", r.Kind)
	w.b.WriteString(`,"operation":{`)
	w.first = true
	w.str("api", r.Operation.API)
	w.opt("key_id", r.Operation.KeyID)
	w.opt("kms_operation", r.Operation.KMSOperation)
	w.opt("kms_request_id", r.Operation.KMSRequestID)
	if len(r.Operation.Params) > 0 {
		w.b.WriteString(`,"params":`)
		if err := encode(w.b, r.Operation.Params); err != nil {
			return nil, err
		}
	}
	w.b.WriteByte('}')
	w.first = false
	w.str("prev", r.Prev)
	w.opt("reason", r.Reason)
	w.str("request_id", r.RequestID)
	w.str("result", r.Result)
	w.str("scope", r.Scope)
	w.b.WriteString(`,"seq":`)
	w.b.WriteString(strconv.FormatUint(r.Seq, 10))
	w.str("service", r.Service)
	w.str("start", r.Start)
	w.opt("trace_id", r.TraceID)
	w.b.WriteString(`,"v":`)
	w.b.WriteString(strconv.Itoa(r.Version))
	w.b.WriteByte('}')
	if w.err != nil {
		return nil, w.err
	}
	return w.b.Bytes(), nil
}

// recordWriter writes object members in the order it is called.
type recordWriter struct {
	b     *bytes.Buffer
	first bool // no member written yet in the current object
	err   error
}

func (w *recordWriter) str(k, v string) {
	if !w.first {
		w.b.WriteByte(',')
	}
	w.first = false
	w.b.WriteByte('"')
	w.b.WriteString(k) // member names are ASCII without escapes
	w.b.WriteString(`":`)
	if err := encodeString(w.b, v); err != nil && w.err == nil {
		w.err = err
	}
}

func (w *recordWriter) opt(k, v string) {
	if v != "" {
		w.str(k, v)
	}
}

// PeekRecord reads what sequencing needs from a stored record without the
// full canonical check: its sequence number and dedupe id.
func PeekRecord(data []byte) (seq uint64, dedupeID string, err error) {
	var r struct {
		Seq       uint64 `json:"seq"`
		Service   string `json:"service"`
		RequestID string `json:"request_id"`
	}
	if err := json.Unmarshal(data, &r); err != nil {
		return 0, "", fmt.Errorf("%w: record: %v", ErrFormat, err)
	}
	return r.Seq, DedupeID(r.Service, r.RequestID), nil
}

// ParseRecord decodes canonical record bytes. It fails with ErrFormat unless
// data is exactly the canonical encoding of a version-1 record, so a record
// has one byte representation and one hash.
func ParseRecord(data []byte) (*Record, error) {
	var r Record
	d := json.NewDecoder(bytes.NewReader(data))
	d.DisallowUnknownFields()
	if err := d.Decode(&r); err != nil {
		return nil, fmt.Errorf("%w: record: %v", ErrFormat, err)
	}
	if r.Version != Version {
		return nil, fmt.Errorf("%w: record version %d", ErrFormat, r.Version)
	}
	again, err := r.Encode()
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(again, data) {
		return nil, fmt.Errorf("%w: record is not in canonical (RFC 8785) form", ErrFormat)
	}
	if r.Seq == 0 {
		return nil, fmt.Errorf("%w: record sequence 0", ErrFormat)
	}
	if _, err := ParseHash(r.Prev); err != nil {
		return nil, err
	}
	return &r, nil
}

// SplitBatch splits the body of a record batch message (canonical records
// joined by "\n"; canonical JSON never contains a raw newline).
func SplitBatch(body []byte) [][]byte {
	if len(body) == 0 {
		return nil
	}
	return bytes.Split(body, []byte{'\n'})
}
