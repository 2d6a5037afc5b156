package shared

import (
	"encoding/json"
	"fmt"
	"time"
)

// Audit event results.
const (
	ResultSuccess = "success"
	ResultFailure = "failure"
	ResultDenied  = "denied"
	ResultExpired = "expired"
)

// Audit scope kinds: the first token after SubjectAuditPrefix.
const (
	AuditKindXKS      = "xks"
	AuditKindOperator = "operator"
	AuditKindTenant   = "tenant"
)

// AuditEventVersion is the version of AuditEvent this build writes.
const AuditEventVersion = 1

// AuditEvent is published (and its JetStream ack awaited) for every operation
// before the caller gets an answer. It never carries plaintext, keys or
// secrets: Params holds sizes and algorithm names only.
type AuditEvent struct {
	Version      int               `json:"v"`
	RequestID    string            `json:"request_id"`
	Kind         string            `json:"kind"`
	Scope        string            `json:"scope"`
	API          API               `json:"api"`
	Service      string            `json:"service"`
	Start        time.Time         `json:"start"`
	End          time.Time         `json:"end"`
	CallerType   string            `json:"caller_type,omitempty"`
	CallerID     string            `json:"caller_id,omitempty"`
	Principal    string            `json:"principal,omitempty"`
	SourceIP     string            `json:"source_ip,omitempty"`
	KeyID        string            `json:"key_id,omitempty"`
	KMSRequestID string            `json:"kms_request_id,omitempty"`
	KMSOperation string            `json:"kms_operation,omitempty"`
	Result       string            `json:"result"`
	Code         Code              `json:"code,omitempty"`
	Reason       string            `json:"reason,omitempty"`
	TraceID      string            `json:"trace_id,omitempty"`
	Params       map[string]string `json:"params,omitempty"`
}

// Subject returns the audit subject of the event:
// sovkeys.audit.<service>.<kind>.<scope token>; each service's NATS user may
// publish only under its own AuditSubjectPrefix.
func (a *AuditEvent) Subject() string {
	return AuditSubjectPrefix(a.Service) + a.Kind + "." + ScopeToken(a.Scope)
}

// Validate checks the fields every audit event must carry.
func (a *AuditEvent) Validate() error {
	switch {
	case a.Version != AuditEventVersion:
		return fmt.Errorf("%w: audit event version %d", ErrValidation, a.Version)
	case a.RequestID == "" || a.Kind == "" || a.API == "" || a.Service == "":
		return fmt.Errorf("%w: audit event lacks request id, kind, api or service", ErrValidation)
	case a.Result != ResultSuccess && a.Result != ResultFailure && a.Result != ResultDenied && a.Result != ResultExpired:
		return fmt.Errorf("%w: audit event result %q", ErrValidation, a.Result)
	}
	return nil
}

// UnmarshalAuditEvent decodes and validates an event.
func UnmarshalAuditEvent(data []byte) (*AuditEvent, error) {
	var a AuditEvent
	if err := json.Unmarshal(data, &a); err != nil {
		return nil, fmt.Errorf("%w: audit event: %v", ErrValidation, err)
	}
	if err := a.Validate(); err != nil {
		return nil, err
	}
	return &a, nil
}
