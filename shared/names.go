package shared

import (
	"strconv"
	"strings"
)

// The one table of names: every NATS subject, JetStream stream, consumer,
// KV bucket and object store the mesh uses is declared here, so permissions
// (shared/infra/natsauth builds them from these constants) and error matching
// are reviewable in one place. Packages that own a name refer to it from here;
// none types its own.
const (
	// SubjectRequestPrefix is where gateways publish normalised requests; authn
	// consumes them. Full subject: sovkeys.req.<api>, e.g. sovkeys.req.xks.encrypt.
	SubjectRequestPrefix = "sovkeys.req."
	// SubjectWorkPrefix is where authn publishes authorised work for a keyworker
	// pool: sovkeys.kw.<pool>.<api>.
	SubjectWorkPrefix = "sovkeys.kw."
	// SubjectAuditPrefix carries audit events:
	// sovkeys.audit.<service>.<kind>.<scope token>; each service may publish
	// only under its own AuditSubjectPrefix.
	SubjectAuditPrefix = "sovkeys.audit."
	// SubjectReplyPrefix is the core-NATS inbox of one gateway: sovkeys.reply.<gateway-id>.
	SubjectReplyPrefix = "sovkeys.reply."
	// SubjectKeyworkerAdminPrefix is the request/reply (nats micro) API of a
	// keyworker pool: sovkeys.kwadmin.<pool>.<endpoint>.
	SubjectKeyworkerAdminPrefix = "sovkeys.kwadmin."
	// SubjectAuthnAdminPrefix is authn's request/reply API for people's
	// signed registry changes: sovkeys.authnadmin.<endpoint> (registry,
	// approve, reject).
	SubjectAuthnAdminPrefix = "sovkeys.authnadmin."

	StreamRequests = "SOVKEYS_REQ"
	StreamAudit    = "SOVKEYS_AUDIT"
	// StreamWorkPrefix + pool name: one work-queue stream per keyworker pool,
	// sized to that pool's HSM throughput.
	StreamWorkPrefix = "SOVKEYS_KW_"

	ConsumerAuthn = "authn"
	ConsumerAudit = "audit"
	// ConsumerAuditExport is the audit service's consumer on the log stream
	// that builds the transparency log tiles from the record batches.
	ConsumerAuditExport = "audit_export"
	// ConsumerWorkPrefix + pool: the one durable pull consumer all keyworkers
	// of a pool share; its MaxAckPending is the HSM concurrency budget.
	ConsumerWorkPrefix = "keyworker_"

	BucketKeystores = "sovkeys_keystores"
	BucketXKSKeys   = "sovkeys_xks_keys"
	BucketPools     = "sovkeys_pools"
	BucketTenants   = "sovkeys_tenants"
	// BucketXKSRotation holds the automatic rotation period of XKS keys;
	// the keyworkers of the key's pool rotate them (services/keyworker).
	BucketXKSRotation = "sovkeys_xks_rotation"
	// BucketPKI holds public material each pool's keyworkers publish: the
	// service signing key and the instance CA certificate.
	BucketPKI = "sovkeys_pki"
	// BucketKillSwitch holds the kill switches (all, per key store, per tenant).
	BucketKillSwitch = "sovkeys_killswitch"
	// BucketUnseal holds submitted unseal shares (memory storage, expiring).
	BucketUnseal = "sovkeys_unseal"
	// BucketEKTObjects and BucketEKTIndex are the JetStream write-once store
	// of encrypted tenant keys: blobs in the object store, the committed
	// name -> digest index in KV (shared/infra/writeonce).
	BucketEKTObjects = "sovkeys_ekt"
	BucketEKTIndex   = "sovkeys_ekt_index"

	// StreamAuditLog holds record batches and checkpoints of every audit
	// scope, the durable source every export is made from.
	StreamAuditLog = "SOVKEYS_AUDITLOG"
	// SubjectAuditRecordPrefix + <kind>.<scope token>: batches of records.
	SubjectAuditRecordPrefix = "sovkeys.auditlog."
	// SubjectAuditCheckpointPrefix + <kind>.<scope token>: signed checkpoints.
	SubjectAuditCheckpointPrefix = "sovkeys.auditcp."
	// SubjectAuditControlPrefix is the audit service's request/reply API
	// (nats micro): sovkeys.auditctl.checkpoint. It is deliberately outside
	// sovkeys.audit.>, which the event stream captures.
	SubjectAuditControlPrefix = "sovkeys.auditctl"
	// BucketAuditExport is the JetStream object store that receives audit
	// exports when no S3 bucket is configured (standalone default).
	BucketAuditExport = "sovkeys_auditlog"
	// BucketAuditSigner holds, per audit log, the last checkpoint the HSM
	// signed: written only by keyworkers, read by the audit service.
	BucketAuditSigner = "sovkeys_audit_signer"
	// BucketOperators is the roster of people: person.<name> -> public nkey
	// and roles, and the quorum policy (key "quorum"). Only the bootstrap
	// identity writes it; every service and person reads it.
	BucketOperators = "sovkeys_operators"
	// BucketAdmin holds signed admin requests waiting for approval
	// (req.<id>) and the nonces of applied signed requests (nonce.<hash>),
	// written by the services that apply them.
	BucketAdmin = "sovkeys_admin"
	// BucketPins holds public keys pinned write-once (the server refuses a
	// second value for a key, and deletes and purges): <pool>.signing_key,
	// the pool's HSM signing key, which callers verify answers with. Each
	// pool's keyworkers may create their pool's keys, nobody may replace
	// them.
	BucketPins = "sovkeys_pins"

	// AccountName is the one NATS account of the mesh.
	AccountName = "SOVKEYS"
)

// Keyworker admin endpoints (sovkeys.kwadmin.<pool>.<endpoint>).
const (
	EndpointHealth         = "health"
	EndpointKeyCreate      = "key_create"
	EndpointKeyInfo        = "key_info"
	EndpointKeyList        = "key_list"
	EndpointSeal           = "seal"
	EndpointUnseal         = "unseal"
	EndpointIssueCert      = "issue_cert"
	EndpointAuditSign      = "audit_sign"
	EndpointAuditPublicKey = "audit_public_key"
	EndpointKeyVersion     = "key_version"
	EndpointKeyDestroy     = "key_destroy"
	// EndpointApprove and EndpointReject decide a signed admin request
	// waiting for its quorum (shared/api/kwadmin).
	EndpointApprove = "approve"
	EndpointReject  = "reject"
	// EndpointRegistry applies a person's signed registry change.
	EndpointRegistry = "registry"
)

// JetStream API error codes the mesh matches on. nats.go names 10071 and
// 10164 (jetstream.JSErrCodeStreamWrongLastSequence[Constant]); 10077 it
// does not.
const (
	// JSErrCodeStoreFailed is JSStreamStoreFailedF: a DiscardNew stream at
	// its limits answers it with "maximum messages/bytes exceeded".
	JSErrCodeStoreFailed = 10077
)

// NATS identities: the user names natsauth mints. A gateway instance's user
// is UserGateway or UserGateway + "_" + <instance> (cluster init mints one per
// gateway); its inbox and reply prefixes follow from the name.
const (
	UserGateway   = "gateway"
	UserAuthn     = "authn"
	UserKeyworker = "keyworker"
	UserAudit     = "audit"
	// UserOperator was the one administrator identity every person shared
	// before personal identities (shared/infra/roster); its credential is
	// revoked on upgrade and never issued again.
	UserOperator = "operator"
	// PersonUserPrefix + name is the NATS user of a person (an operator
	// with roles): person_alice.
	PersonUserPrefix = "person_"
	// KeyworkerUserPrefix + pool is the NATS user of a pool's keyworkers
	// (KeyworkerUser): one per pool, its rights scoped to that pool.
	KeyworkerUserPrefix = UserKeyworker + "-"
	// UserBootstrap declares streams, consumers and buckets; services only bind.
	UserBootstrap = "bootstrap"
	// UserBackup and UserRestore are the short-lived identities of
	// `sovkeys backup` and `sovkeys restore` (natsauth.BackupPermissions).
	UserBackup  = "backup"
	UserRestore = "restore"

	// InboxPrefixBase + user is a user's private inbox prefix (core request
	// replies, JetStream API replies, consumer deliveries): _INBOX_<user>.
	InboxPrefixBase = "_INBOX_"
	// SubjectSysInboxAll is the default, shared inbox space nobody may use.
	SubjectSysInboxAll = "_INBOX.>"

	// NATS JetStream API subjects natsauth grants or denies.
	JSAPIPrefix              = "$JS.API."
	JSAPIInfo                = "$JS.API.INFO"
	JSStreamCreate           = "$JS.API.STREAM.CREATE."
	JSStreamUpdate           = "$JS.API.STREAM.UPDATE."
	JSStreamDelete           = "$JS.API.STREAM.DELETE."
	JSStreamPurge            = "$JS.API.STREAM.PURGE."
	JSStreamInfo             = "$JS.API.STREAM.INFO."
	JSStreamNames            = "$JS.API.STREAM.NAMES"
	JSStreamList             = "$JS.API.STREAM.LIST"
	JSStreamMsgGet           = "$JS.API.STREAM.MSG.GET."
	JSStreamMsgDelete        = "$JS.API.STREAM.MSG.DELETE."
	JSDirectGet              = "$JS.API.DIRECT.GET."
	JSConsumerCreate         = "$JS.API.CONSUMER.CREATE."
	JSConsumerDurable        = "$JS.API.CONSUMER.DURABLE.CREATE."
	JSConsumerDelete         = "$JS.API.CONSUMER.DELETE."
	JSConsumerInfo           = "$JS.API.CONSUMER.INFO."
	JSConsumerNext           = "$JS.API.CONSUMER.MSG.NEXT."
	JSConsumerNames          = "$JS.API.CONSUMER.NAMES."
	JSConsumerList           = "$JS.API.CONSUMER.LIST."
	JSAckPrefix              = "$JS.ACK."
	JSStreamLeaderStepdown   = "$JS.API.STREAM.LEADER.STEPDOWN."
	JSConsumerLeaderStepdown = "$JS.API.CONSUMER.LEADER.STEPDOWN."
	// Disaster recovery (sovkeys backup/restore): JetStream's snapshot and
	// restore API, and the subjects its chunks are acked and sent on.
	JSStreamSnapshot      = "$JS.API.STREAM.SNAPSHOT."
	JSStreamRestore       = "$JS.API.STREAM.RESTORE."
	JSSnapshotAckPrefix   = "$JS.SNAPSHOT.ACK."
	JSSnapshotChunkPrefix = "$JS.SNAPSHOT.RESTORE."
	JSFlowPrefix          = "$JS.FC."
	SubjectMicroAll       = "$SRV.>"
	SubjectKVPrefix       = "$KV."
	SubjectObjectPrefix   = "$O."
)

// InboxPrefix is user's private inbox prefix, as nats.CustomInboxPrefix
// takes it (no trailing dot): _INBOX_<user>.
func InboxPrefix(user string) string { return InboxPrefixBase + user }

// InboxSubjects is the subject space of user's inboxes.
func InboxSubjects(user string) string { return InboxPrefix(user) + ".>" }

// ReplySubjectPrefix is the prefix of the core-NATS reply subjects of the
// gateway instance logged in as user: sovkeys.reply.<user>.<instance id>.
func ReplySubjectPrefix(user string) string { return SubjectReplyPrefix + user + "." }

// AuditSubjectPrefix is where service publishes its audit events:
// sovkeys.audit.<service>.>; each service user may publish only there.
func AuditSubjectPrefix(service string) string { return SubjectAuditPrefix + service + "." }

// ValidUserName reports whether u can name a NATS user of the mesh: 1-64
// characters of [a-z0-9_-], safe as a subject token.
func ValidUserName(u string) bool {
	if u == "" || len(u) > 64 {
		return false
	}
	for _, c := range u {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// KVStream is the stream behind KV bucket b.
func KVStream(b string) string { return "KV_" + b }

// ObjectStream is the stream behind object store b.
func ObjectStream(b string) string { return "OBJ_" + b }

// KVSubjects is the subject space of KV bucket b's keys.
func KVSubjects(b string) string { return "$KV." + b + ".>" }

// ObjectSubjects is the subject space of object store b's chunks and metadata.
func ObjectSubjects(b string) string { return "$O." + b + ".>" }

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

// PKIHierarchyLock is the BucketPKI key of the lease a keyworker holds while
// it creates its pool's key hierarchy: one creator per HSM, cluster-wide.
func PKIHierarchyLock(pool string) string { return pool + ".hierarchy_lock" }

// RequestSubject returns the subject a gateway publishes api requests on.
func RequestSubject(api API) string { return SubjectRequestPrefix + string(api) }

// WorkSubject returns the subject of api work for a keyworker pool.
func WorkSubject(pool string, api API) string {
	return SubjectWorkPrefix + pool + "." + string(api)
}

// WorkStream returns the work-queue stream name of a pool.
func WorkStream(pool string) string { return StreamWorkPrefix + strings.ToUpper(pool) }

// Sibling streams. Each request, work and audit stream may have up to
// MaxSiblings siblings whose leaders sit on different NATS nodes, so a
// publish that finds its stream without a leader goes to a sibling
// (shared/infra/mesh/siblings.go). Sibling 0 is the stream of the names
// above, with the subjects above; sibling i > 0 is "<stream>-<i>" ('-' is
// in no pool name) and its subjects carry i in the prefix's last token:
// sovkeys.req<i>.<api>, sovkeys.kw<i>.<pool>.<api>,
// sovkeys.audit<i>.<service>.<kind>.<scope>, disjoint from sibling 0's.
const MaxSiblings = 5

// SiblingStream is sibling i of stream base.
func SiblingStream(base string, i int) string {
	if i == 0 {
		return base
	}
	return base + "-" + strconv.Itoa(i)
}

// SiblingPrefix is sibling i's form of a subject prefix ending in '.':
// sovkeys.req. -> sovkeys.req<i>. (sibling 0: the prefix itself).
func SiblingPrefix(prefix string, i int) string {
	if i == 0 {
		return prefix
	}
	return strings.TrimSuffix(prefix, ".") + strconv.Itoa(i) + "."
}

// SiblingPrefixes is prefix's form for every possible sibling.
func SiblingPrefixes(prefix string) []string {
	out := make([]string, MaxSiblings)
	for i := range out {
		out[i] = SiblingPrefix(prefix, i)
	}
	return out
}

// SiblingStreams is every possible sibling name of stream base.
func SiblingStreams(base string) []string {
	out := make([]string, MaxSiblings)
	for i := range out {
		out[i] = SiblingStream(base, i)
	}
	return out
}

// RequestSubjectOn is RequestSubject on request-stream sibling i.
func RequestSubjectOn(i int, api API) string {
	return SiblingPrefix(SubjectRequestPrefix, i) + string(api)
}

// WorkSubjectOn is WorkSubject on sibling i of the pool's work stream.
func WorkSubjectOn(i int, pool string, api API) string {
	return SiblingPrefix(SubjectWorkPrefix, i) + pool + "." + string(api)
}

// SiblingOfSubject returns the sibling index of a subject under prefix (or
// one of its sibling forms) and the rest of the subject after it.
func SiblingOfSubject(prefix, subject string) (int, string, bool) {
	for i := range MaxSiblings {
		if rest, ok := strings.CutPrefix(subject, SiblingPrefix(prefix, i)); ok {
			return i, rest, true
		}
	}
	return 0, "", false
}

// WorkConsumer returns the durable consumer name of a pool.
func WorkConsumer(pool string) string { return ConsumerWorkPrefix + pool }

// KeyworkerUser is the NATS user of pool's keyworkers.
func KeyworkerUser(pool string) string { return KeyworkerUserPrefix + pool }

// AuthnAdminSubject returns the subject of authn's admin endpoint.
func AuthnAdminSubject(endpoint string) string { return SubjectAuthnAdminPrefix + endpoint }

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

// KVBuckets lists every KV bucket of the mesh.
func KVBuckets() []string {
	return []string{BucketKeystores, BucketXKSKeys, BucketPools, BucketTenants, BucketPKI, BucketKillSwitch,
		BucketUnseal, BucketEKTIndex, BucketXKSRotation, BucketAuditSigner, BucketOperators, BucketAdmin, BucketPins}
}

// Keys of the unseal bucket (BucketUnseal), per pool. A sealed keyworker
// process publishes its ephemeral public key under UnsealKeyKey; custodians
// store shares encrypted to it under UnsealShareKey; the keyworkers of the
// pool count failed HSM logins under UnsealLoginsKey. Process ids are
// 1-32 chars of [a-z0-9].

// UnsealKeyKey is where keyworker process id of pool publishes its key.
func UnsealKeyKey(pool, id string) string { return pool + ".key." + id }

// UnsealKeysFilter matches every published key of pool.
func UnsealKeysFilter(pool string) string { return pool + ".key.*" }

// UnsealShareKey is where share x encrypted to keyworker process id is stored.
func UnsealShareKey(pool, id string, x int) string {
	return pool + ".share." + id + "." + strconv.Itoa(x)
}

// UnsealSharesFilter matches every encrypted share of pool (all processes).
func UnsealSharesFilter(pool string) string { return pool + ".share.>" }

// UnsealLoginsKey holds pool's failed-login budget (compare-and-set).
func UnsealLoginsKey(pool string) string { return pool + ".logins" }
