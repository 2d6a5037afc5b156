// Package auditlog is the customer-verifiable audit log: the record and
// checkpoint formats, their one canonical encoding (RFC 8785 JCS), the hash
// chain, where records and checkpoints live (JetStream subjects, object
// keys) and the verification library a customer runs with only a bucket and
// the audit public key. docs/audit.md describes the formats for anyone who
// wants to recompute hashes without this code.
//
// A scope is one independent log: a tenant (kind "tenant"), an XKS key store
// (kind "xks") or the operator log (kind "operator"). Records of a scope are
// numbered 1, 2, 3, ... without gaps; record n carries the SHA-256 of the
// canonical bytes of record n-1 (32 zero bytes for record 1). A checkpoint is
// the HSM's ECDSA P-384 signature over a scope's head: (scope, sequence,
// hash of that record).
package auditlog

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/sovkeys/sovkeys/shared"
)

// Version of the record and checkpoint formats this package writes.
const Version = 1

// JetStream names. Records and checkpoints share one stream, the durable
// source every export is made from.
const (
	// StreamLog holds record batches and checkpoints of every scope.
	StreamLog = shared.StreamAuditLog
	// SubjectRecordPrefix + <kind>.<scope token>: batches of records.
	SubjectRecordPrefix = shared.SubjectAuditRecordPrefix
	// SubjectCheckpointPrefix + <kind>.<scope token>: signed checkpoints.
	SubjectCheckpointPrefix = shared.SubjectAuditCheckpointPrefix
	// SubjectControlPrefix is the audit service's request/reply API
	// (nats micro): sovkeys.auditctl.checkpoint. It is deliberately outside
	// sovkeys.audit.>, which the event stream captures.
	SubjectControlPrefix = shared.SubjectAuditControlPrefix
	// EndpointCheckpoint makes a checkpoint of a scope's head on demand.
	EndpointCheckpoint = "checkpoint"
	// ObjectBucket is the JetStream object store that receives exports when
	// no S3 bucket is configured (standalone default).
	ObjectBucket = shared.BucketAuditExport
	// HeaderBatch names the sequence range a record batch holds: "first-last".
	HeaderBatch = "Sovkeys-Audit-Batch"
	// HeaderCopyWatch (unix nanoseconds) on a record batch: until then,
	// events of the scope may have a failover copy among its records, so
	// the sequencer checks every event against the committed records
	// (services/audit/sequencer.go). Carried from batch to batch.
	HeaderCopyWatch = "Sovkeys-Audit-Copy-Watch"
)

// Keyworker admin endpoints of the audit key (sovkeys.kwadmin.<pool>.<endpoint>).
const (
	EndpointSign      = shared.EndpointAuditSign
	EndpointPublicKey = shared.EndpointAuditPublicKey
	// KeyLabel labels the ECDSA P-384 audit key pair in the pool's HSM.
	KeyLabel = "sovkeys-audit-v1"
)

// PKIKey is the key, in KV bucket shared.BucketPKI, of a pool's audit public
// key (DER SubjectPublicKeyInfo).
func PKIKey(pool string) string { return pool + ".audit_key" }

// Errors.
var (
	// ErrFormat: bytes are not a well-formed, canonical record or checkpoint.
	ErrFormat = errors.New("auditlog: malformed or non-canonical")
	// ErrScope: an invalid scope kind or a subject/key that names no scope.
	ErrScope = errors.New("auditlog: invalid scope")
)

// Scope identifies one log.
type Scope struct {
	Kind string // shared.AuditKindTenant, AuditKindXKS or AuditKindOperator
	ID   string // tenant id, key store prefix ("" for the operator log)
}

// String is "kind:id", or "kind" when the id is empty (the operator log).
func (s Scope) String() string {
	if s.ID == "" {
		return s.Kind
	}
	return s.Kind + ":" + s.ID
}

// Validate checks the kind: 1-16 characters of [a-z].
func (s Scope) Validate() error {
	if s.Kind == "" || len(s.Kind) > 16 {
		return fmt.Errorf("%w: kind %q", ErrScope, s.Kind)
	}
	for _, c := range s.Kind {
		if c < 'a' || c > 'z' {
			return fmt.Errorf("%w: kind %q", ErrScope, s.Kind)
		}
	}
	return nil
}

// Token is the scope id as a subject/key token (shared.ScopeToken: unpadded
// base64url, "_" when empty).
func (s Scope) Token() string { return shared.ScopeToken(s.ID) }

// RecordSubject is where the scope's record batches are published.
func (s Scope) RecordSubject() string { return SubjectRecordPrefix + s.Kind + "." + s.Token() }

// CheckpointSubject is where the scope's checkpoints are published.
func (s Scope) CheckpointSubject() string {
	return SubjectCheckpointPrefix + s.Kind + "." + s.Token()
}

// Dir is the scope's directory in an export bucket: "<kind>/<token>".
func (s Scope) Dir() string { return s.Kind + "/" + s.Token() }

// SeqName is the object name of sequence number seq: 20 digits + ".json".
func SeqName(seq uint64) string { return fmt.Sprintf("%020d.json", seq) }

// ParseSeqName reverses SeqName.
func ParseSeqName(name string) (uint64, bool) {
	digits, ok := strings.CutSuffix(name, ".json")
	if !ok || len(digits) != 20 {
		return 0, false
	}
	n, err := strconv.ParseUint(digits, 10, 64)
	return n, err == nil && n > 0
}

// RecordKey is the export key of record seq: "<kind>/<token>/<seq>.json".
func (s Scope) RecordKey(seq uint64) string { return s.Dir() + "/" + SeqName(seq) }

// CheckpointKey is the export key of the checkpoint at seq:
// "<kind>/<token>/checkpoints/<seq>.json".
func (s Scope) CheckpointKey(seq uint64) string {
	return s.Dir() + "/checkpoints/" + SeqName(seq)
}

// ScopeOfSubject returns the scope of a record or checkpoint subject.
func ScopeOfSubject(subject string) (s Scope, checkpoint bool, err error) {
	rest, ok := strings.CutPrefix(subject, SubjectRecordPrefix)
	if !ok {
		if rest, ok = strings.CutPrefix(subject, SubjectCheckpointPrefix); !ok {
			return Scope{}, false, fmt.Errorf("%w: subject %q", ErrScope, subject)
		}
		checkpoint = true
	}
	kind, tok, ok := strings.Cut(rest, ".")
	if !ok || strings.Contains(tok, ".") {
		return Scope{}, false, fmt.Errorf("%w: subject %q", ErrScope, subject)
	}
	id, err := shared.ParseScopeToken(tok)
	if err != nil {
		return Scope{}, false, fmt.Errorf("%w: subject %q", ErrScope, subject)
	}
	s = Scope{Kind: kind, ID: id}
	return s, checkpoint, s.Validate()
}

// ScopeOfEvent returns the scope an audit event is numbered in.
func ScopeOfEvent(ev *shared.AuditEvent) Scope { return Scope{Kind: ev.Kind, ID: ev.Scope} }
