package natsauth

import (
	"github.com/sovkeys/sovkeys/shared"
	"slices"
)

// Least privilege on the mesh (docs/security.md, "Rights per service"):
// services publish and consume, they never administer. Streams, consumers'
// streams and buckets are declared by the bootstrap identity; a service user
// may look them up, publish where its job says, read what it must, and
// nothing else: no stream create, update, delete or purge, no KV writes
// outside its own keys, no subscription outside its own inbox
// (_INBOX_<user>.>), its own service subjects and, for a gateway, its own
// reply subjects. Every name comes from shared/names.go. Production clusters
// use the same lists (sovkeys cluster init mints them).

// all is the subject wildcard matching one or more trailing tokens.
const all = ">"

// any1 matches exactly one token.
const any1 = "*"

func under(prefix string) string { return prefix + all }

// underSiblings is under() of every sibling form of prefix
// (shared.SiblingPrefix): sovkeys.req.>, sovkeys.req1.>, ...
func underSiblings(prefix string) []string {
	var out []string
	for _, p := range shared.SiblingPrefixes(prefix) {
		out = append(out, under(p))
	}
	return out
}

// siblings applies grant to every sibling of stream base.
func siblings(base string, grant func(stream string) []string) []string {
	var out []string
	for _, s := range shared.SiblingStreams(base) {
		out = append(out, grant(s)...)
	}
	return out
}

// auditPrefixes are service's audit subjects on every audit sibling.
func auditPrefixes(service string) []string {
	var out []string
	for _, p := range shared.SiblingPrefixes(shared.SubjectAuditPrefix) {
		out = append(out, under(p+service+"."))
	}
	return out
}

// streamLookup lets a user bind a stream (STREAM.INFO) and nothing more.
func purge(stream string) []string { return []string{shared.JSStreamPurge + stream} }

func streamLookup(stream string) []string {
	return []string{shared.JSStreamInfo + stream}
}

// consume lets a user bind stream and pull from its durable consumer,
// declaring that one consumer if needed (never the stream).
func consume(stream, durable string) []string {
	c := stream + "." + durable
	return []string{
		shared.JSStreamInfo + stream,
		shared.JSConsumerCreate + c, shared.JSConsumerCreate + c + "." + all, shared.JSConsumerDurable + c,
		shared.JSConsumerInfo + c, shared.JSConsumerNext + c,
		shared.JSAckPrefix + c + "." + all, shared.JSFlowPrefix + stream + "." + all,
	}
}

// readStream lets a user read a stream's messages: lookups, direct and
// leader gets, and ephemeral (ordered) consumers it may also remove.
func readStream(s string) []string {
	return []string{
		shared.JSStreamInfo + s, shared.JSStreamMsgGet + s,
		shared.JSDirectGet + s, shared.JSDirectGet + s + "." + all,
		shared.JSConsumerCreate + s, shared.JSConsumerCreate + s + "." + all,
		shared.JSConsumerDelete + s + "." + all, shared.JSConsumerInfo + s + "." + all,
		shared.JSConsumerNext + s + "." + all, shared.JSAckPrefix + s + "." + all,
		shared.JSFlowPrefix + s + "." + all,
	}
}

// kvRead lets a user bind, read and watch KV bucket b.
func kvRead(b string) []string { return readStream(shared.KVStream(b)) }

// kvWrite lets a user read bucket b and write the keys matching each of
// keys (KV key patterns, wildcards allowed).
func kvWrite(b string, keys ...string) []string {
	out := kvRead(b)
	for _, k := range keys {
		out = append(out, shared.SubjectKVPrefix+b+"."+k)
	}
	return out
}

// objReadWrite lets a user read object store b and add objects to it:
// never purge it (its stream denies message deletes).
func objReadWrite(b string) []string {
	return append(readStream(shared.ObjectStream(b)), shared.ObjectSubjects(b))
}

func join(lists ...[]string) []string {
	var out []string
	for _, l := range lists {
		out = append(out, l...)
	}
	return out
}

// common is what every service user has: JetStream account info, nats micro
// discovery and its private inbox.
func common(user string) (pub, sub []string) {
	return []string{shared.JSAPIInfo, shared.SubjectMicroAll},
		[]string{shared.InboxSubjects(user), shared.SubjectMicroAll}
}

// denyAlways is denied to every service user on top of its allow list, so a
// later broadening of an allow list cannot silently grant the dangerous
// rights: administering streams, and the shared inbox space.
func denyAlways() (pub, sub []string) {
	return []string{
			shared.JSStreamCreate + all, shared.JSStreamUpdate + all, shared.JSStreamDelete + all,
			shared.JSStreamPurge + all, shared.JSStreamMsgDelete + all,
		},
		[]string{shared.SubjectSysInboxAll}
}

// Services of the mesh, as ServicePermissions takes them.
const (
	ServiceGateway   = shared.UserGateway
	ServiceAuthn     = shared.UserAuthn
	ServiceKeyworker = shared.UserKeyworker
	ServiceAudit     = shared.UserAudit
)

// ServicePermissions returns the permissions of the user named service
// (one user per service, as a standalone node has). pools names the
// keyworker pools of the deployment.
func ServicePermissions(service string, pools []string) Permissions {
	return UserPermissions(service, service, pools)
}

// UserPermissions returns the permissions of NATS user user playing
// service: the user name scopes its inbox and, for a gateway, its reply
// subjects (sovkeys.reply.<user>.>), so cluster init can mint one user per
// gateway instance.
func UserPermissions(user, service string, pools []string) Permissions {
	if !shared.ValidUserName(user) {
		return none()
	}
	pub, sub := common(user)
	denyPub, denySub := denyAlways()
	perms := Permissions{DenyPub: denyPub, DenySub: denySub, Respond: true}
	perAuditPrefix := auditPrefixes
	consumeAll := func(base, durable string) []string {
		return siblings(base, func(s string) []string { return consume(s, durable) })
	}
	switch service {
	case ServiceGateway:
		perms.Pub = join(pub,
			underSiblings(shared.SubjectRequestPrefix), perAuditPrefix(shared.AuditServiceGateway),
			siblings(shared.StreamRequests, streamLookup), siblings(shared.StreamAudit, streamLookup),
			kvRead(shared.BucketKeystores), kvRead(shared.BucketXKSKeys), kvRead(shared.BucketPKI), kvRead(shared.BucketKillSwitch),
			// The roster: kill switch releases are verified against it.
			kvRead(shared.BucketOperators))
		// The pools' pinned signing keys, served to instances.
		perms.Pub = join(perms.Pub, kvRead(shared.BucketPins))
		perms.Sub = join(sub, []string{under(shared.ReplySubjectPrefix(user))})
	case ServiceAuthn:
		perms.Pub = join(pub,
			underSiblings(shared.SubjectWorkPrefix), []string{under(shared.SubjectReplyPrefix)}, perAuditPrefix(shared.AuditServiceAuthn),
			[]string{shared.KeyworkerAdminSubject(any1, shared.EndpointUnseal), shared.KeyworkerAdminSubject(any1, shared.EndpointHealth),
				shared.KeyworkerAdminSubject(any1, shared.EndpointKeyDestroy)},
			consumeAll(shared.StreamRequests, shared.ConsumerAuthn), siblings(shared.StreamAudit, streamLookup),
			kvRead(shared.BucketKeystores), kvRead(shared.BucketXKSKeys), kvRead(shared.BucketTenants),
			kvRead(shared.BucketPKI), kvRead(shared.BucketPools), kvRead(shared.BucketKillSwitch))
		for _, p := range pools {
			perms.Pub = append(perms.Pub, siblings(shared.WorkStream(p), streamLookup)...)
		}
		// People's signed registry changes (services/authn/admin.go): authn
		// already decides every request from these buckets, so writing them
		// on a verified, audited request grants it nothing it could not
		// already do with a key; the kill switch stays out of its reach.
		perms.Pub = join(perms.Pub, kvRead(shared.BucketOperators), kvWrite(shared.BucketAdmin, all),
			kvWrite(shared.BucketKeystores, all), kvWrite(shared.BucketXKSKeys, all), kvWrite(shared.BucketTenants, all))
		// The pools' pinned keys: keyworker answers are verified with them.
		perms.Pub = join(perms.Pub, kvRead(shared.BucketPins))
		perms.Sub = join(sub, []string{under(shared.SubjectAuthnAdminPrefix)})
	case ServiceKeyworker:
		// The HSM sidecar: its pools' work queues and admin subjects, the
		// EKT store (add only), its pools' PKI entries and registration.
		perms.Pub = join(pub,
			[]string{under(shared.SubjectReplyPrefix)}, perAuditPrefix(shared.AuditServiceKeyworker),
			objReadWrite(shared.BucketEKTObjects), kvWrite(shared.BucketEKTIndex, all),
			siblings(shared.StreamAudit, streamLookup),
			kvRead(shared.BucketTenants), kvRead(shared.BucketKillSwitch))
		perms.Sub = sub
		for _, p := range pools {
			perms.Pub = join(perms.Pub, consumeAll(shared.WorkStream(p), shared.WorkConsumer(p)),
				kvWrite(shared.BucketPools, p), kvWrite(shared.BucketPKI, p+"."+all), kvWrite(shared.BucketUnseal, p+"."+all),
				kvWrite(shared.BucketXKSRotation, p+"."+all), kvWrite(shared.BucketAuditSigner, p+"."+all))
		}
		// Signed admin requests: the roster to verify them, the admin bucket
		// for requests waiting for approval and applied nonces.
		// The registry, read-only: a key version request's key store and key
		// id are checked against it.
		perms.Pub = join(perms.Pub, kvRead(shared.BucketOperators), kvWrite(shared.BucketAdmin, all),
			kvRead(shared.BucketKeystores), kvRead(shared.BucketXKSKeys))
		for _, p := range pools {
			perms.Sub = append(perms.Sub, shared.KeyworkerAdminSubject(p, all))
			// Its pool's pins (signing and box keys): created once, never
			// replaced (the bucket refuses a second value).
			perms.Pub = append(perms.Pub, kvWrite(shared.BucketPins, p+"."+all)...)
		}
	case ServiceAudit:
		// Sequences, signs and exports: consumes the event stream, appends
		// to the audit log (which denies deletes and purges), exports to its
		// object store, asks keyworkers to sign. Never the request or work
		// queues, the unseal shares, the EKT store, or anyone's inbox.
		perms.Pub = join(pub,
			[]string{under(shared.SubjectAuditRecordPrefix), under(shared.SubjectAuditCheckpointPrefix),
				shared.KeyworkerAdminSubject(any1, shared.EndpointAuditSign), shared.KeyworkerAdminSubject(any1, shared.EndpointAuditPublicKey)},
			siblings(shared.StreamAudit, readStream), consumeAll(shared.StreamAudit, shared.ConsumerAudit),
			readStream(shared.StreamAuditLog), []string{shared.JSConsumerDurable + shared.StreamAuditLog + "." + all},
			objReadWrite(shared.BucketAuditExport),
			kvRead(shared.BucketTenants), kvRead(shared.BucketPKI), kvRead(shared.BucketAuditSigner),
			// Scopes must exist in the registry (services/audit/scopes.go).
			kvRead(shared.BucketKeystores),
			// Numbered events leave the event stream (audit purges below its
			// consumer's ack floor); the audit identity already decides what
			// gets numbered, so this grants it nothing new.
			// The export object store is write-once (2026-12-07): its stream
			// denies deletes, purges and roll-ups, and nobody may purge it.
			siblings(shared.StreamAudit, purge))
		perms.Sub = join(sub, []string{shared.SubjectAuditControlPrefix + "." + all})
		// Every other purge stays denied (denyAlways would deny this one too).
		perms.DenyPub = slices.DeleteFunc(perms.DenyPub, func(d string) bool { return d == shared.JSStreamPurge+all })
		perms.DenyPub = append(perms.DenyPub, purgeAllBut(pools, shared.SiblingStreams(shared.StreamAudit)...)...)
	default:
		return none()
	}
	perms.DenyPub = append(perms.DenyPub, otherAuditPrefixes(service)...)
	return perms
}

// purgeAllBut denies purging every stream of the mesh but those in keep.
func purgeAllBut(pools []string, keep ...string) []string {
	streams := append(shared.SiblingStreams(shared.StreamRequests), shared.SiblingStreams(shared.StreamAudit)...)
	streams = append(streams, shared.StreamAuditLog)
	for _, p := range pools {
		streams = append(streams, shared.SiblingStreams(shared.WorkStream(p))...)
	}
	for _, b := range shared.KVBuckets() {
		streams = append(streams, shared.KVStream(b))
	}
	for _, b := range []string{shared.BucketEKTObjects, shared.BucketAuditExport} {
		streams = append(streams, shared.ObjectStream(b))
	}
	var out []string
	for _, s := range streams {
		if !slices.Contains(keep, s) {
			out = append(out, shared.JSStreamPurge+s)
		}
	}
	return out
}

// otherAuditPrefixes are the audit subjects of every service but svc.
func otherAuditPrefixes(svc string) []string {
	var out []string
	for _, s := range []string{shared.AuditServiceGateway, shared.AuditServiceAuthn, shared.AuditServiceKeyworker, shared.AuditServiceCLI, shared.AuditServiceAudit} {
		if s != svc {
			out = append(out, auditPrefixes(s)...)
		}
	}
	return out
}

// none grants nothing (an unknown service).
func none() Permissions {
	return Permissions{Pub: []string{shared.JSAPIInfo}, Sub: []string{shared.SubjectSysInboxAll}, DenySub: []string{all}, DenyPub: []string{all}}
}

// BootstrapPermissions is the declaring identity: create and update streams
// (and so KV buckets and object stores), look them up; the only messages it
// reads and writes are the roster of people and the quorum policy
// (shared/infra/roster), and it may delete or purge nothing. It runs
// `sovkeys init` and `sovkeys operator add|remove`, is kept with the trust
// seeds, and no running service holds it.
func BootstrapPermissions() Permissions {
	return Permissions{
		Pub: join([]string{shared.JSAPIInfo, shared.JSStreamCreate + all, shared.JSStreamUpdate + all, shared.JSStreamInfo + all,
			shared.JSStreamNames, shared.JSStreamList, shared.JSConsumerInfo + all,
			// SpreadLeaders: move stream and consumer leaders between nodes.
			shared.JSStreamLeaderStepdown + all, shared.JSConsumerLeaderStepdown + all},
			kvWrite(shared.BucketOperators, all), personAuditPrefixes(BootstrapPerson), siblings(shared.StreamAudit, streamLookup),
			// Approved roster changes (roster/people.go) are read there.
			kvRead(shared.BucketAdmin)),
		Sub:     []string{shared.InboxSubjects(shared.UserBootstrap)},
		DenyPub: []string{shared.JSStreamDelete + all, shared.JSStreamPurge + all, shared.JSStreamMsgDelete + all},
	}
}

// BackupPermissions are `sovkeys backup`'s (2026-12-07): list streams,
// take snapshots (JetStream's snapshot API) of every file-storage stream
// and read the audit checkpoints, nothing else: no stream, bucket or
// consumer change, no service subject, and no snapshot of the plaintext
// queues (request and work streams of pools, and their siblings) or of the
// unseal shares. The credential is issued for one backup by whoever holds
// the trust seeds (a standalone node's --data; a cluster's `sovkeys init`
// directory).
func BackupPermissions(pools []string) Permissions {
	deny := []string{shared.JSStreamDelete + all, shared.JSStreamPurge + all, shared.JSStreamMsgDelete + all,
		shared.JSStreamSnapshot + shared.KVStream(shared.BucketUnseal)}
	queues := shared.SiblingStreams(shared.StreamRequests)
	for _, p := range pools {
		queues = append(queues, shared.SiblingStreams(shared.WorkStream(p))...)
	}
	for _, q := range queues {
		deny = append(deny, shared.JSStreamSnapshot+q)
	}
	return Permissions{
		Pub: []string{shared.JSAPIInfo, shared.JSStreamNames, shared.JSStreamList, shared.JSStreamInfo + all,
			shared.JSStreamSnapshot + all, shared.JSSnapshotAckPrefix + all,
			// The newest signed checkpoint of each scope, read from the
			// audit export object store (an ordered consumer).
			shared.JSConsumerCreate + shared.ObjectStream(shared.BucketAuditExport) + "." + all,
			shared.JSConsumerDelete + shared.ObjectStream(shared.BucketAuditExport) + "." + all,
			shared.JSStreamMsgGet + shared.ObjectStream(shared.BucketAuditExport), shared.JSDirectGet + shared.ObjectStream(shared.BucketAuditExport),
			shared.JSDirectGet + shared.ObjectStream(shared.BucketAuditExport) + "." + all,
			shared.JSFlowPrefix + all},
		Sub:     []string{shared.InboxSubjects(shared.UserBackup)},
		DenyPub: deny,
	}
}

// RestorePermissions are `sovkeys restore`'s: restore streams that do not
// exist (JetStream refuses to restore over one), read them, and write the
// restore's own operator audit record; never delete or purge.
func RestorePermissions() Permissions {
	return Permissions{
		Pub: join([]string{shared.JSAPIInfo, shared.JSStreamNames, shared.JSStreamList, shared.JSStreamInfo + all,
			shared.JSStreamRestore + all, shared.JSSnapshotChunkPrefix + all},
			personAuditPrefixes(shared.UserRestore)),
		Sub:     []string{shared.InboxSubjects(shared.UserRestore)},
		DenyPub: []string{shared.JSStreamDelete + all, shared.JSStreamPurge + all, shared.JSStreamMsgDelete + all},
	}
}
