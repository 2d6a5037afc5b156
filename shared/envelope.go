package shared

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"
)

// API names one operation of the public surface. It is the last tokens of the
// request and work subjects.
type API string

// APIs served by the mesh.
const (
	APIXKSMetadata API = "xks.metadata"
	APIXKSEncrypt  API = "xks.encrypt"
	APIXKSDecrypt  API = "xks.decrypt"
	APIXKSHealth   API = "xks.health"

	APIVSGenerate API = "vs.generate"
	APIVSDecrypt  API = "vs.decrypt"
	APIVSConvert  API = "vs.convert"
)

// EnvelopeVersion is the version of Envelope this build writes.
const EnvelopeVersion = 1

// Envelope is a request travelling the mesh: the gateway builds it from the
// HTTP request, authn verifies the caller and adds Authz, a keyworker executes
// it. Body is the raw HTTP body so authn verifies signatures over exactly the
// bytes the caller signed.
type Envelope struct {
	Version  int       `json:"v"`
	ID       string    `json:"id"`
	API      API       `json:"api"`
	Received time.Time `json:"received"`
	Deadline time.Time `json:"deadline"`
	ReplyTo  string    `json:"reply_to"`
	KeyStore string    `json:"keystore,omitempty"`
	KeyID    string    `json:"key_id,omitempty"`
	Evidence Evidence  `json:"evidence"`
	Body     []byte    `json:"-"` // framed raw after the JSON header, never base64
	// BodyForm says what Body holds: "" the caller's raw HTTP body (gateway
	// to authn), BodyFormXKSWork the request authn parsed and validated, in
	// the work form of shared/api/xks (authn to a keyworker).
	BodyForm string `json:"body_form,omitempty"`

	Authz *Authz `json:"authz,omitempty"`
}

// Evidence is what the gateway saw of the caller. Header holds only the
// headers authentication needs (authn drops it before forwarding).
type Evidence struct {
	SourceIP string              `json:"source_ip,omitempty"`
	Method   string              `json:"method,omitempty"`
	Path     string              `json:"path,omitempty"`
	RawQuery string              `json:"raw_query,omitempty"`
	Host     string              `json:"host,omitempty"`
	Header   map[string][]string `json:"header,omitempty"`
	// ClientCerts is the TLS client certificate chain (DER, leaf first) the
	// caller proved possession of; authn verifies it against the instance CA.
	ClientCerts [][]byte `json:"client_certs,omitempty"`
	// InstanceID is the {InstanceId} of a volume-secret path.
	InstanceID string `json:"instance_id,omitempty"`
	// AWSIdentity is the X-Sovkeys-AWS-Identity header (vs.AWSIdentity);
	// authn verifies it and drops it before forwarding.
	AWSIdentity string `json:"aws_identity,omitempty"`
	// SourceVPC is the VPC id a trusted proxy named (gateway
	// --vpc-id-header); SourceIP then also comes from the proxy.
	SourceVPC string `json:"source_vpc,omitempty"`
}

// Authz is authn's verdict, attached to work it forwards to a keyworker.
type Authz struct {
	CallerType   string `json:"caller_type"`
	CallerID     string `json:"caller_id"`
	Principal    string `json:"principal,omitempty"`
	KMSRequestID string `json:"kms_request_id,omitempty"`
	KMSOperation string `json:"kms_operation,omitempty"`
	Pool         string `json:"pool"`
	KeyLabel     string `json:"key_label,omitempty"`
	KeyStatus    string `json:"key_status,omitempty"`
	// Volume-secret calls: the caller's verified tenant and its EKT.
	Tenant  string `json:"tenant,omitempty"`
	EKTName string `json:"ekt_name,omitempty"`
}

// BodyFormXKSWork marks an envelope whose Body is an XKS encrypt or decrypt
// request in the work form (xks.ParseEncryptWork, xks.ParseDecryptWork):
// the JSON body is parsed once, in authn, after its signature is verified.
const BodyFormXKSWork = "xks-work-v1"

// Expired reports whether the envelope's deadline has passed at now.
func (e *Envelope) Expired(now time.Time) bool {
	return !e.Deadline.IsZero() && !now.Before(e.Deadline)
}

// envelopeMagic starts a framed envelope with a JSON header: "SKE" and the
// frame version. This build reads it and writes envelopeMagicBinary.
const envelopeMagic = "SKE1"

// maxEnvelopeHeader bounds the header of a framed envelope.
const maxEnvelopeHeader = 1 << 20

// Marshal frames the envelope for the wire: magic, the 4-byte big-endian
// length of the header, the header (envelope_binary.go), then the raw body.
// The body is carried as is: no base64, no JSON scanning of caller bytes on
// each hop.
func (e *Envelope) Marshal() ([]byte, error) {
	out := make([]byte, len(envelopeMagicBinary)+4, 512+len(e.Body))
	copy(out, envelopeMagicBinary)
	out = e.appendBinaryHeader(out)
	n := len(out) - len(envelopeMagicBinary) - 4
	if n > maxEnvelopeHeader {
		return nil, NewError(CodeInternal, "envelope: header of %d bytes is too large", n)
	}
	binary.BigEndian.PutUint32(out[len(envelopeMagicBinary):], uint32(n))
	return append(out, e.Body...), nil
}

// marshalJSON frames the envelope with the JSON header of "SKE1", which
// builds before the binary header wrote and this build still reads.
func (e *Envelope) marshalJSON() ([]byte, error) {
	hdr, err := json.Marshal(e)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(envelopeMagic)+4+len(hdr)+len(e.Body))
	out = append(out, envelopeMagic...)
	out = binary.BigEndian.AppendUint32(out, uint32(len(hdr)))
	out = append(out, hdr...)
	return append(out, e.Body...), nil
}

// UnmarshalEnvelope decodes and sanity-checks an envelope from the wire,
// with a binary ("SKE2") or a JSON ("SKE1") header. Body aliases data.
func UnmarshalEnvelope(data []byte) (*Envelope, error) {
	if len(data) < len(envelopeMagic)+4 {
		return nil, NewError(CodeInternal, "envelope: not a framed envelope")
	}
	magic := string(data[:len(envelopeMagic)])
	if magic != envelopeMagic && magic != envelopeMagicBinary {
		return nil, NewError(CodeInternal, "envelope: not a framed envelope")
	}
	n := binary.BigEndian.Uint32(data[len(envelopeMagic):])
	rest := data[len(envelopeMagic)+4:]
	if n > maxEnvelopeHeader || uint64(n) > uint64(len(rest)) {
		return nil, NewError(CodeInternal, "envelope: header length out of range")
	}
	var e Envelope
	if magic == envelopeMagicBinary {
		if err := e.decodeBinaryHeader(rest[:n]); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrValidation, err)
		}
	} else if err := json.Unmarshal(rest[:n], &e); err != nil {
		return nil, fmt.Errorf("%w: envelope: %v", ErrValidation, err)
	}
	if e.Version != EnvelopeVersion {
		return nil, NewError(CodeInternal, "envelope: unsupported version %d", e.Version)
	}
	if e.ID == "" || e.API == "" || e.ReplyTo == "" {
		return nil, NewError(CodeInternal, "envelope: missing id, api or reply subject")
	}
	if body := rest[n:]; len(body) > 0 {
		e.Body = body
	}
	return &e, nil
}

// ScopeToken encodes a scope (key store prefix, tenant id) into a token that
// is safe inside a NATS subject and a KV key: unpadded base64url, "_" when
// empty.
func ScopeToken(scope string) string {
	if scope == "" {
		return "_"
	}
	return base64.RawURLEncoding.EncodeToString([]byte(scope))
}

// ParseScopeToken reverses ScopeToken.
func ParseScopeToken(tok string) (string, error) {
	if tok == "_" {
		return "", nil
	}
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return "", fmt.Errorf("%w: scope token: %v", ErrValidation, err)
	}
	return string(b), nil
}
