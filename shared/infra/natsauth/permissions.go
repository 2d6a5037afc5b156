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

// streamLookup lets a user bind a stream (STREAM.INFO) and nothing more.
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
	perAuditPrefix := func(svc string) []string { return []string{under(shared.AuditSubjectPrefix(svc))} }
	switch service {
	case ServiceGateway:
		perms.Pub = join(pub,
			[]string{under(shared.SubjectRequestPrefix)}, perAuditPrefix(shared.AuditServiceGateway),
			streamLookup(shared.StreamRequests), streamLookup(shared.StreamAudit),
			kvRead(shared.BucketKeystores), kvRead(shared.BucketXKSKeys), kvRead(shared.BucketPKI), kvRead(shared.BucketKillSwitch))
		perms.Sub = join(sub, []string{under(shared.ReplySubjectPrefix(user))})
	case ServiceAuthn:
		perms.Pub = join(pub,
			[]string{under(shared.SubjectWorkPrefix), under(shared.SubjectReplyPrefix)}, perAuditPrefix(shared.AuditServiceAuthn),
			[]string{shared.KeyworkerAdminSubject(any1, shared.EndpointUnseal), shared.KeyworkerAdminSubject(any1, shared.EndpointHealth)},
			consume(shared.StreamRequests, shared.ConsumerAuthn), streamLookup(shared.StreamAudit),
			kvRead(shared.BucketKeystores), kvRead(shared.BucketXKSKeys), kvRead(shared.BucketTenants),
			kvRead(shared.BucketPKI), kvRead(shared.BucketPools), kvRead(shared.BucketKillSwitch))
		for _, p := range pools {
			perms.Pub = append(perms.Pub, streamLookup(shared.WorkStream(p))...)
		}
		perms.Sub = sub
	case ServiceKeyworker:
		// The HSM sidecar: its pools' work queues and admin subjects, the
		// EKT store (add only), its pools' PKI entries and registration.
		perms.Pub = join(pub,
			[]string{under(shared.SubjectReplyPrefix)}, perAuditPrefix(shared.AuditServiceKeyworker),
			objReadWrite(shared.BucketEKTObjects), kvWrite(shared.BucketEKTIndex, all),
			streamLookup(shared.StreamAudit),
			kvRead(shared.BucketTenants), kvRead(shared.BucketKillSwitch))
		perms.Sub = sub
		for _, p := range pools {
			perms.Pub = join(perms.Pub, consume(shared.WorkStream(p), shared.WorkConsumer(p)),
				kvWrite(shared.BucketPools, p), kvWrite(shared.BucketPKI, p+"."+all), kvWrite(shared.BucketUnseal, p+"."+all),
				kvWrite(shared.BucketXKSRotation, p+"."+all), kvWrite(shared.BucketAuditSigner, p+"."+all))
			perms.Sub = append(perms.Sub, shared.KeyworkerAdminSubject(p, all))
		}
	case ServiceAudit:
		// Sequences, signs and exports: consumes the event stream, appends
		// to the audit log (which denies deletes and purges), exports to its
		// object store, asks keyworkers to sign. Never the request or work
		// queues, the unseal shares, the EKT store, or anyone's inbox.
		perms.Pub = join(pub,
			[]string{under(shared.SubjectAuditRecordPrefix), under(shared.SubjectAuditCheckpointPrefix),
				shared.KeyworkerAdminSubject(any1, shared.EndpointAuditSign), shared.KeyworkerAdminSubject(any1, shared.EndpointAuditPublicKey)},
			readStream(shared.StreamAudit), consume(shared.StreamAudit, shared.ConsumerAudit),
			readStream(shared.StreamAuditLog), []string{shared.JSConsumerDurable + shared.StreamAuditLog + "." + all},
			objReadWrite(shared.BucketAuditExport),
			kvRead(shared.BucketTenants), kvRead(shared.BucketPKI), kvRead(shared.BucketAuditSigner),
			// Numbered events leave the event stream (audit purges below its
			// consumer's ack floor); the audit identity already decides what
			// gets numbered, so this grants it nothing new.
			// The export bucket's one mutable object, each log's newest
			// checkpoint, is replaced in place: the object store then purges
			// the old chunks. Tiles and bundles are written once by name, and
			// a removed export is detectable (signed checkpoints, witnesses),
			// never forgeable.
			[]string{shared.JSStreamPurge + shared.StreamAudit, shared.JSStreamPurge + shared.ObjectStream(shared.BucketAuditExport)})
		perms.Sub = join(sub, []string{shared.SubjectAuditControlPrefix + "." + all})
		// Every other purge stays denied (denyAlways would deny this one too).
		perms.DenyPub = slices.DeleteFunc(perms.DenyPub, func(d string) bool { return d == shared.JSStreamPurge+all })
		perms.DenyPub = append(perms.DenyPub, purgeAllBut(pools, shared.StreamAudit, shared.ObjectStream(shared.BucketAuditExport))...)
	default:
		return none()
	}
	perms.DenyPub = append(perms.DenyPub, otherAuditPrefixes(service)...)
	return perms
}

// purgeAllBut denies purging every stream of the mesh but those in keep.
func purgeAllBut(pools []string, keep ...string) []string {
	streams := []string{shared.StreamRequests, shared.StreamAudit, shared.StreamAuditLog}
	for _, p := range pools {
		streams = append(streams, shared.WorkStream(p))
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
			out = append(out, under(shared.AuditSubjectPrefix(s)))
		}
	}
	return out
}

// none grants nothing (an unknown service).
func none() Permissions {
	return Permissions{Pub: []string{shared.JSAPIInfo}, Sub: []string{shared.SubjectSysInboxAll}, DenySub: []string{all}, DenyPub: []string{all}}
}

// protectedStreams are the write-once stores: nobody may delete, purge or
// reconfigure them once bootstrapped.
func protectedStreams() []string {
	return []string{shared.ObjectStream(shared.BucketEKTObjects), shared.KVStream(shared.BucketEKTIndex), shared.StreamAuditLog}
}

// OperatorPermissions is the administrator's (CLI) user: it manages key
// stores, tenants, kill switches and keys, but may not delete any stream,
// purge, delete from or reconfigure the write-once stores, queue HSM work,
// forge gateway replies, or publish another service's audit events.
func OperatorPermissions() Permissions {
	deny := []string{shared.JSStreamDelete + all, under(shared.SubjectWorkPrefix), under(shared.SubjectReplyPrefix)}
	for _, s := range protectedStreams() {
		deny = append(deny, shared.JSStreamPurge+s, shared.JSStreamMsgDelete+s, shared.JSStreamUpdate+s)
	}
	deny = append(deny, otherAuditPrefixes(shared.AuditServiceCLI)...)
	return Permissions{DenyPub: deny}
}

// BootstrapPermissions is the declaring identity: create and update streams
// (and so KV buckets and object stores), look them up; it reads and writes
// no message, and may delete or purge nothing. It runs `sovkeys init`, is
// kept with the trust seeds, and no running service holds it.
func BootstrapPermissions() Permissions {
	return Permissions{
		Pub: []string{shared.JSAPIInfo, shared.JSStreamCreate + all, shared.JSStreamUpdate + all, shared.JSStreamInfo + all,
			shared.JSStreamNames, shared.JSStreamList},
		Sub:     []string{shared.InboxSubjects(shared.UserBootstrap)},
		DenyPub: []string{shared.JSStreamDelete + all, shared.JSStreamPurge + all, shared.JSStreamMsgDelete + all},
	}
}
