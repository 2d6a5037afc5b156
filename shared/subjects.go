package shared

import "strings"

// NATS subjects, JetStream streams and KV buckets. Every name the mesh uses is
// here so that permissions (who may publish or subscribe what) are reviewable
// in one place.
const (
	// SubjectRequestPrefix is where gateways publish normalised requests; authn
	// consumes them. Full subject: sovkeys.req.<api>, e.g. sovkeys.req.xks.encrypt.
	SubjectRequestPrefix = "sovkeys.req."
	// SubjectWorkPrefix is where authn publishes authorised work for a keyworker
	// pool: sovkeys.kw.<pool>.<api>.
	SubjectWorkPrefix = "sovkeys.kw."
	// SubjectAuditPrefix carries audit events: sovkeys.audit.<scope>.
	SubjectAuditPrefix = "sovkeys.audit."
	// SubjectReplyPrefix is the core-NATS inbox of one gateway: sovkeys.reply.<gateway-id>.
	SubjectReplyPrefix = "sovkeys.reply."
	// SubjectKeyworkerAdminPrefix is the request/reply (nats micro) API of a
	// keyworker pool: sovkeys.kwadmin.<pool>.<endpoint>.
	SubjectKeyworkerAdminPrefix = "sovkeys.kwadmin."

	StreamRequests = "SOVKEYS_REQ"
	StreamAudit    = "SOVKEYS_AUDIT"
	// StreamWorkPrefix + pool name: one work-queue stream per keyworker pool,
	// sized to that pool's HSM throughput.
	StreamWorkPrefix = "SOVKEYS_KW_"

	ConsumerAuthn = "authn"
	ConsumerAudit = "audit"
	// ConsumerWorkPrefix + pool: the one durable pull consumer all keyworkers
	// of a pool share; its MaxAckPending is the HSM concurrency budget.
	ConsumerWorkPrefix = "keyworker_"

	BucketKeystores = "sovkeys_keystores"
	BucketXKSKeys   = "sovkeys_xks_keys"
	BucketPools     = "sovkeys_pools"
	BucketTenants   = "sovkeys_tenants"
	// BucketPKI holds public material each pool's keyworkers publish: the
	// service signing key and the instance CA certificate.
	BucketPKI = "sovkeys_pki"
)

// nats micro service names: every service registers one, so gateways'
// readiness checks can ping $SRV.PING.<name>.
const (
	ServiceGateway   = "sovkeys-gateway"
	ServiceAuthn     = "sovkeys-authn"
	ServiceKeyworker = "sovkeys-keyworker"
	ServiceAudit     = "sovkeys-audit"
)

// NATS headers used between services.
const (
	HeaderRequestID    = "Sovkeys-Request-Id"
	HeaderErrorCode    = "Sovkeys-Error-Code"
	HeaderErrorMessage = "Sovkeys-Error-Message"
	// HeaderMsgID is JetStream's de-duplication header; set to the request id.
	HeaderMsgID = "Nats-Msg-Id"
)

// PKISigningKey is the BucketPKI key of a pool's signing public key (DER SPKI).
func PKISigningKey(pool string) string { return pool + ".signing_key" }

// PKIInstanceCA is the BucketPKI key of a pool's instance CA certificate (DER).
func PKIInstanceCA(pool string) string { return pool + ".instance_ca" }

// RequestSubject returns the subject a gateway publishes api requests on.
func RequestSubject(api API) string { return SubjectRequestPrefix + string(api) }

// WorkSubject returns the subject of api work for a keyworker pool.
func WorkSubject(pool string, api API) string {
	return SubjectWorkPrefix + pool + "." + string(api)
}

// WorkStream returns the work-queue stream name of a pool.
func WorkStream(pool string) string { return StreamWorkPrefix + strings.ToUpper(pool) }

// WorkConsumer returns the durable consumer name of a pool.
func WorkConsumer(pool string) string { return ConsumerWorkPrefix + pool }

// KeyworkerAdminSubject returns the admin endpoint subject of a pool.
func KeyworkerAdminSubject(pool, endpoint string) string {
	return SubjectKeyworkerAdminPrefix + pool + "." + endpoint
}

// ValidPoolName reports whether p can name a keyworker pool: 1-32 characters
// of [a-z0-9_], so it is safe in subjects and stream names.
func ValidPoolName(p string) bool {
	if p == "" || len(p) > 32 {
		return false
	}
	for _, c := range p {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// Version is the sovkeys release reported by health endpoints.
const Version = "0.1.0"
