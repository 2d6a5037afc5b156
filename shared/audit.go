package shared

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Audit event results.
const (
	ResultSuccess = "success"
	ResultFailure = "failure"
	ResultDenied  = "denied"
	ResultExpired = "expired"
)

// Audit scope kinds: the token after the service in an audit subject.
const (
	AuditKindXKS      = "xks"
	AuditKindOperator = "operator"
	AuditKindTenant   = "tenant"
	// AuditKindUnauthenticated is the ONE scope of requests refused before
	// any credential was verified (aggregated counts, never one scope per
	// URL a stranger makes up).
	AuditKindUnauthenticated = "unauthenticated"
)

// Audit event publishers: the service token of an audit subject. Each NATS
// user may publish only under AuditSubjectPrefix of its own service.
const (
	AuditServiceGateway   = "gateway"
	AuditServiceAuthn     = "authn"
	AuditServiceKeyworker = "keyworker"
	AuditServiceCLI       = "cli"
	AuditServiceAudit     = "audit"
)

// AuditServicePersonPrefix + name is the audit service token of a person
// (shared/infra/roster): each person's NATS user may publish only under
// sovkeys.audit.cli-<name>., so the audit service knows who wrote an
// operator event from its subject, not from what the event claims.
const AuditServicePersonPrefix = "cli-"

// AuditServicePerson is the audit service token of the person name.
func AuditServicePerson(name string) string { return AuditServicePersonPrefix + name }

// PersonOfAuditService returns the person whose audit service token is
// service, if it is one.
func PersonOfAuditService(service string) (string, bool) {
	name, ok := strings.CutPrefix(service, AuditServicePersonPrefix)
	return name, ok && ValidPersonName(name)
}

// ValidPersonName reports whether n can name a person: 1-32 characters of
// [a-z0-9-], starting with a letter (safe in subjects, user names and files).
func ValidPersonName(n string) bool {
	if n == "" || len(n) > 32 || n[0] < 'a' || n[0] > 'z' {
		return false
	}
	for _, c := range n {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// AuditKindAllowed reports whether service may write events of kind: the
// audit service records an event of any other kind as a forgery attempt.
func AuditKindAllowed(service, kind string) bool {
	switch service {
	case AuditServiceGateway:
		// The gateway proves nothing about a caller: it writes only the ONE
		// unauthenticated scope, never one a URL names (2026-12-07).
		return kind == AuditKindUnauthenticated
	case AuditServiceAuthn:
		// Operator events: the people's signed registry changes it applies.
		return kind == AuditKindXKS || kind == AuditKindTenant || kind == AuditKindUnauthenticated || kind == AuditKindOperator
	case AuditServiceKeyworker:
		// Operator events: the people's signed admin requests it applies.
		return kind == AuditKindXKS || kind == AuditKindTenant || kind == AuditKindOperator
	case AuditServiceCLI, AuditServiceAudit:
		return kind == AuditKindOperator
	}
	if _, ok := PersonOfAuditService(service); ok {
		return kind == AuditKindOperator
	}
	return false
}

// AuditSubject is the subject an event of service, kind and scope is
// published on: sovkeys.audit.<service>.<kind>.<scope token>.
func AuditSubject(service, kind, scope string) string {
	return AuditSubjectPrefix(service) + kind + "." + ScopeToken(scope)
}

// AuditSubjectOn is AuditSubject on audit-stream sibling i
// (sovkeys.audit<i>.<service>.<kind>.<scope token>; sibling 0: AuditSubject).
func AuditSubjectOn(i int, service, kind, scope string) string {
	return SiblingPrefix(SubjectAuditPrefix, i) + service + "." + kind + "." + ScopeToken(scope)
}

// ParseAuditSubject splits an audit subject (of any sibling) into service,
// kind and scope.
func ParseAuditSubject(subject string) (service, kind, scope string, err error) {
	_, rest, ok := SiblingOfSubject(SubjectAuditPrefix, subject)
	parts := strings.Split(rest, ".")
	if !ok || len(parts) != 3 || parts[0] == "" || parts[1] == "" {
		return "", "", "", fmt.Errorf("%w: audit subject %q", ErrValidation, subject)
	}
	if scope, err = ParseScopeToken(parts[2]); err != nil {
		return "", "", "", fmt.Errorf("%w: audit subject %q", ErrValidation, subject)
	}
	return parts[0], parts[1], scope, nil
}

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
// sovkeys.audit.<service>.<kind>.<scope token>.
func (a *AuditEvent) Subject() string { return AuditSubject(a.Service, a.Kind, a.Scope) }

// AuditMsgID is the JetStream de-duplication id of an event.
func AuditMsgID(service, requestID string) string { return service + ":" + requestID }

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

// CallerTypePerson is the caller type of an event a person caused (through
// a signed admin request or the CLI): CallerID is the person's name.
const CallerTypePerson = "person"
