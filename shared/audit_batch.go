package shared

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
)

// Audit event batches (docs/audit.md, "Batches")
//
// A service with many operations in flight publishes their events as one
// JetStream message (one store, one ack, one delivery to the audit service
// instead of one each) on AuditBatchSubjectOn: the body is "SKA1", the
// number of events (uvarint) and each event's JSON prefixed by its length
// (uvarint). Its de-duplication id is AuditBatchMsgID with a random nonce
// the publisher keeps across retries, so no other service can claim it
// first. The audit service numbers each event as if it had come alone and
// acks the message once every event of it is recorded.

// AuditKindBatch is the kind token of a batch subject: events of any kind
// of the publishing service, each checked on its own.
const AuditKindBatch = "batch"

// MaxAuditBatch bounds the events of one batch, MaxAuditBatchBytes its body.
const (
	MaxAuditBatch      = 256
	MaxAuditBatchBytes = 512 << 10
)

var auditBatchMagic = []byte("SKA1")

// AuditBatchSubjectOn is the subject of service's batches on audit-stream
// sibling i.
func AuditBatchSubjectOn(i int, service string) string {
	return AuditSubjectOn(i, service, AuditKindBatch, "")
}

// AuditBatchMsgID is the de-duplication id of service's batch with nonce.
func AuditBatchMsgID(service, nonce string) string { return service + ":b:" + nonce }

// IsAuditBatchMsgID reports whether id is a batch id of service.
func IsAuditBatchMsgID(service, id string) bool {
	nonce, ok := strings.CutPrefix(id, service+":b:")
	return ok && len(nonce) >= 16
}

// MarshalAuditBatch frames events (each an AuditEvent's JSON).
func MarshalAuditBatch(events [][]byte) []byte {
	n := len(auditBatchMagic) + binary.MaxVarintLen64
	for _, e := range events {
		n += binary.MaxVarintLen64 + len(e)
	}
	b := make([]byte, 0, n)
	b = append(b, auditBatchMagic...)
	b = binary.AppendUvarint(b, uint64(len(events)))
	for _, e := range events {
		b = binary.AppendUvarint(b, uint64(len(e)))
		b = append(b, e...)
	}
	return b
}

// UnmarshalAuditBatch splits a batch body into its events' JSON (sharing
// data's bytes). Anything but a well-formed batch of 1..MaxAuditBatch
// non-empty events is an error.
func UnmarshalAuditBatch(data []byte) ([][]byte, error) {
	bad := func(why string) error { return fmt.Errorf("%w: audit batch: %s", ErrValidation, why) }
	if len(data) > MaxAuditBatchBytes {
		return nil, bad("too large")
	}
	if !bytes.HasPrefix(data, auditBatchMagic) {
		return nil, bad("not an SKA1 batch")
	}
	rest := data[len(auditBatchMagic):]
	count, k := canonicalUvarint(rest)
	if k <= 0 || count == 0 || count > MaxAuditBatch {
		return nil, bad("event count")
	}
	rest = rest[k:]
	out := make([][]byte, 0, count)
	for range count {
		l, k := canonicalUvarint(rest)
		if k <= 0 || l == 0 || l > uint64(len(rest)-k) {
			return nil, bad("event length")
		}
		out = append(out, rest[k:k+int(l):k+int(l)])
		rest = rest[k+int(l):]
	}
	if len(rest) != 0 {
		return nil, bad("trailing bytes")
	}
	return out, nil
}

// canonicalUvarint is binary.Uvarint refusing (k <= 0) any but the
// shortest encoding: one batch has one framing.
func canonicalUvarint(b []byte) (uint64, int) {
	v, k := binary.Uvarint(b)
	if k > 1 && b[k-1] == 0 {
		return 0, -1
	}
	return v, k
}
