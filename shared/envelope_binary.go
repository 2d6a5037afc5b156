package shared

import (
	"encoding/binary"
	"errors"
	"time"
)

// The binary envelope header ("SKE2"): the fields of Envelope in a fixed
// order, strings and byte strings as a uvarint length and the bytes, times
// as varint Unix nanoseconds (0 for the zero time), counts as uvarints.
// It replaces the JSON header of "SKE1" on the request path, where every
// request is decoded twice (authn, keyworker) and JSON reflection over the
// caller's HTTP headers was the largest single cost after the body parse
// (docs/BENCHMARKS.md). A new field means a new frame version: readers keep
// accepting the older ones.
//
//	version, id, api, received, deadline, reply_to, keystore, key_id, body_form,
//	evidence: source_ip, method, path, raw_query, host,
//	          header count, then per header: name, value count, values,
//	          client cert count, then each DER,
//	          instance_id, aws_identity, source_vpc,
//	authz: 0 (none) or 1 then caller_type, caller_id, principal, kms_request_id,
//	       kms_operation, pool, key_label, key_status, tenant, ekt_name
const envelopeMagicBinary = "SKE2"

var errShortHeader = errors.New("envelope: binary header is truncated")

func (e *Envelope) appendBinaryHeader(b []byte) []byte {
	b = binary.AppendUvarint(b, uint64(e.Version))
	b = appendStr(b, e.ID)
	b = appendStr(b, string(e.API))
	b = appendTime(b, e.Received)
	b = appendTime(b, e.Deadline)
	for _, s := range []string{e.ReplyTo, e.KeyStore, e.KeyID, e.BodyForm} {
		b = appendStr(b, s)
	}
	ev := &e.Evidence
	for _, s := range []string{ev.SourceIP, ev.Method, ev.Path, ev.RawQuery, ev.Host} {
		b = appendStr(b, s)
	}
	b = binary.AppendUvarint(b, uint64(len(ev.Header)))
	for name, vals := range ev.Header {
		b = appendStr(b, name)
		b = binary.AppendUvarint(b, uint64(len(vals)))
		for _, v := range vals {
			b = appendStr(b, v)
		}
	}
	b = binary.AppendUvarint(b, uint64(len(ev.ClientCerts)))
	for _, c := range ev.ClientCerts {
		b = binary.AppendUvarint(b, uint64(len(c)))
		b = append(b, c...)
	}
	for _, s := range []string{ev.InstanceID, ev.AWSIdentity, ev.SourceVPC} {
		b = appendStr(b, s)
	}
	if e.Authz == nil {
		return append(b, 0)
	}
	a := e.Authz
	b = append(b, 1)
	for _, s := range []string{a.CallerType, a.CallerID, a.Principal, a.KMSRequestID, a.KMSOperation,
		a.Pool, a.KeyLabel, a.KeyStatus, a.Tenant, a.EKTName} {
		b = appendStr(b, s)
	}
	return b
}

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendTime(b []byte, t time.Time) []byte {
	if t.IsZero() {
		return binary.AppendVarint(b, 0)
	}
	return binary.AppendVarint(b, t.UnixNano())
}

// headerReader reads a binary header; the first error sticks.
type headerReader struct {
	b   []byte
	err error
}

func (r *headerReader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errShortHeader
		return 0
	}
	r.b = r.b[n:]
	return v
}

// count reads a count of items that take at least one byte each, so a
// forged count cannot make the reader allocate more than the header holds.
func (r *headerReader) count() int {
	n := r.uvarint()
	if n > uint64(len(r.b)) {
		r.err = errShortHeader
		return 0
	}
	return int(n)
}

func (r *headerReader) bytes() []byte {
	n := r.count()
	if r.err != nil {
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *headerReader) str() string { return string(r.bytes()) }

func (r *headerReader) time() time.Time {
	if r.err != nil {
		return time.Time{}
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.err = errShortHeader
		return time.Time{}
	}
	r.b = r.b[n:]
	if v == 0 {
		return time.Time{}
	}
	return time.Unix(0, v).UTC()
}

func (r *headerReader) byte() byte {
	if r.err != nil || len(r.b) == 0 {
		r.err = errShortHeader
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

// decodeBinaryHeader fills e from a binary header; it must be consumed
// exactly.
func (e *Envelope) decodeBinaryHeader(hdr []byte) error {
	r := &headerReader{b: hdr}
	e.Version = int(r.uvarint())
	e.ID, e.API = r.str(), API(r.str())
	e.Received, e.Deadline = r.time(), r.time()
	e.ReplyTo, e.KeyStore, e.KeyID, e.BodyForm = r.str(), r.str(), r.str(), r.str()
	ev := &e.Evidence
	ev.SourceIP, ev.Method, ev.Path, ev.RawQuery, ev.Host = r.str(), r.str(), r.str(), r.str(), r.str()
	if n := r.count(); n > 0 {
		ev.Header = make(map[string][]string, n)
		for range n {
			name := r.str()
			vals := make([]string, r.count())
			for i := range vals {
				vals[i] = r.str()
			}
			if r.err != nil {
				break
			}
			ev.Header[name] = vals
		}
	}
	if n := r.count(); n > 0 {
		ev.ClientCerts = make([][]byte, n)
		for i := range ev.ClientCerts {
			// Copied: the caller may reuse the message buffer.
			ev.ClientCerts[i] = append([]byte(nil), r.bytes()...)
		}
	}
	ev.InstanceID, ev.AWSIdentity, ev.SourceVPC = r.str(), r.str(), r.str()
	switch r.byte() {
	case 0:
	case 1:
		e.Authz = &Authz{
			CallerType: r.str(), CallerID: r.str(), Principal: r.str(), KMSRequestID: r.str(), KMSOperation: r.str(),
			Pool: r.str(), KeyLabel: r.str(), KeyStatus: r.str(), Tenant: r.str(), EKTName: r.str(),
		}
	default:
		if r.err == nil {
			r.err = errors.New("envelope: bad authz marker")
		}
	}
	if r.err == nil && len(r.b) != 0 {
		r.err = errors.New("envelope: binary header has trailing bytes")
	}
	return r.err
}
