package natsauth_test

import (
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
)

// What the shared operator credential could do, tried with every person's
// credential (one per role, and one with every role): each refusal names
// the subject whose permission refuses it.
func TestAttackPeopleHaveNoneOfTheOperatorsPowers(t *testing.T) {
	t.Parallel()
	m := startMesh(t)
	for _, user := range personUsers() {
		// 1. Decrypt answers and other inboxes.
		for _, subj := range []string{shared.SubjectReplyPrefix + ">", shared.ReplySubjectPrefix("gateway") + ">", shared.SubjectSysInboxAll,
			shared.InboxSubjects(natsauth.ServiceGateway), shared.InboxSubjects(natsauth.ServiceKeyworker),
			shared.InboxSubjects(natsauth.PersonUser("alice")), ">"} {
			if subj == shared.InboxSubjects(user) {
				continue
			}
			m.refusedSub(t, user, subj)
		}
		// 2. Add a subject to a work stream and store work there.
		for _, s := range []string{shared.WorkStream(pool), shared.SiblingStream(shared.WorkStream(pool), 1), shared.StreamRequests, shared.StreamAudit} {
			m.refusedPub(t, user, "reconfigure a stream", shared.JSStreamUpdate+s)
			m.refusedPub(t, user, "create a stream", shared.JSStreamCreate+s+"_X")
		}
		m.refusedPub(t, user, "queue HSM work", shared.WorkSubject(pool, shared.APIXKSEncrypt))
		m.refusedPub(t, user, "queue HSM work on a sibling", shared.WorkSubjectOn(2, pool, shared.APIXKSDecrypt))
		m.refusedPub(t, user, "queue a request", shared.RequestSubject(shared.APIXKSEncrypt))
		m.refusedPub(t, user, "steal the work consumer", shared.JSConsumerNext+shared.WorkStream(pool)+"."+shared.WorkConsumer(pool))
		// 3. Append to the audit log; publish as a service or another person.
		m.refusedPub(t, user, "write the audit log", shared.SubjectAuditRecordPrefix+"xks.x")
		m.refusedPub(t, user, "write an audit checkpoint", shared.SubjectAuditCheckpointPrefix+"xks.x")
		m.refusedPub(t, user, "publish a keyworker audit event", shared.AuditSubject(shared.AuditServiceKeyworker, shared.AuditKindXKS, "x"))
		m.refusedPub(t, user, "publish the legacy operator audit event", shared.AuditSubject(shared.AuditServiceCLI, shared.AuditKindOperator, ""))
		if user != natsauth.PersonUser("alice") {
			m.refusedPub(t, user, "publish as another person", shared.AuditSubject(shared.AuditServicePerson("alice"), shared.AuditKindOperator, ""))
		}
		// 4. Purge or delete anything; rewrite the signer state, the roster,
		// the admin requests, the EKT store or the audit export.
		for _, s := range []string{shared.StreamAudit, shared.KVStream(shared.BucketAuditSigner), shared.KVStream(shared.BucketKeystores),
			shared.KVStream(shared.BucketOperators), shared.KVStream(shared.BucketAdmin), shared.ObjectStream(shared.BucketAuditExport),
			shared.ObjectStream(shared.BucketEKTObjects), shared.KVStream(shared.BucketEKTIndex), shared.StreamAuditLog} {
			m.refusedPub(t, user, "purge a stream", shared.JSStreamPurge+s)
			m.refusedPub(t, user, "delete a stream", shared.JSStreamDelete+s)
			m.refusedPub(t, user, "delete a message", shared.JSStreamMsgDelete+s)
		}
		for _, subj := range []string{shared.SubjectKVPrefix + shared.BucketAuditSigner + ".default.xks.x",
			shared.SubjectKVPrefix + shared.BucketOperators + ".person.mallory", shared.SubjectKVPrefix + shared.BucketOperators + ".quorum",
			shared.SubjectKVPrefix + shared.BucketAdmin + ".req.x", shared.SubjectKVPrefix + shared.BucketEKTIndex + ".x",
			shared.SubjectObjectPrefix + shared.BucketAuditExport + ".C.x", shared.SubjectKVPrefix + shared.BucketPKI + ".default.signing_key"} {
			m.refusedPub(t, user, "write a store that is not a person's", subj)
		}
		// Service-only endpoints: the audit signer, the secret unseal.
		m.refusedPub(t, user, "ask the HSM to sign an audit checkpoint", shared.KeyworkerAdminSubject(pool, shared.EndpointAuditSign))
		m.refusedPub(t, user, "unseal a key store secret", shared.KeyworkerAdminSubject(pool, shared.EndpointUnseal))
		m.refusedPub(t, user, "destroy a key without its waiting period", shared.KeyworkerAdminSubject(pool, shared.EndpointKeyDestroy))
		m.refusedSub(t, user, shared.KeyworkerAdminSubject(pool, ">"))
	}
}

// Only authn asks a keyworker to destroy a key (past its deletion date,
// which the keyworker checks in the registry).
func TestAttackOnlyAuthnDestroysKeys(t *testing.T) {
	t.Parallel()
	m := startMesh(t)
	for _, user := range []string{natsauth.ServiceGateway, natsauth.ServiceAudit, natsauth.ServiceKeyworker} {
		m.refusedPub(t, user, "destroy a key", shared.KeyworkerAdminSubject(pool, shared.EndpointKeyDestroy))
	}
}

// Each role holds its own rights and no other's.
func TestAttackRolesAreSeparate(t *testing.T) {
	t.Parallel()
	m := startMesh(t)
	alice, sam, carol, audrey := natsauth.PersonUser("alice"), natsauth.PersonUser("sam"), natsauth.PersonUser("carol"), natsauth.PersonUser("audrey")
	registry := shared.AuthnAdminSubject(shared.EndpointRegistry)
	kill := shared.SubjectKVPrefix + shared.BucketKillSwitch + ".all"
	share := shared.SubjectKVPrefix + shared.BucketUnseal + "." + shared.UnsealShareKey(pool, "kw1", 1)
	for user, refused := range map[string][]string{
		alice:  {kill, share, shared.JSStreamMsgGet + shared.StreamAuditLog},
		sam:    {shared.KeyworkerAdminSubject(pool, shared.EndpointKeyCreate), shared.KeyworkerAdminSubject(pool, shared.EndpointKeyVersion), share},
		carol:  {registry, kill, shared.KeyworkerAdminSubject(pool, shared.EndpointKeyCreate), shared.KeyworkerAdminSubject(pool, shared.EndpointSeal), shared.JSStreamMsgGet + shared.StreamAuditLog},
		audrey: {registry, kill, share, shared.KeyworkerAdminSubject(pool, shared.EndpointKeyVersion), shared.KeyworkerAdminSubject(pool, shared.EndpointIssueCert)},
	} {
		for _, subj := range refused {
			m.refusedPub(t, user, "act outside the role", subj)
		}
	}
	// Unseal shares: nobody but a custodian reads the bucket.
	for _, user := range []string{alice, sam, audrey} {
		m.refusedPub(t, user, "read unseal shares", shared.JSStreamMsgGet+shared.KVStream(shared.BucketUnseal))
		m.refusedPub(t, user, "read unseal shares", shared.JSDirectGet+shared.KVStream(shared.BucketUnseal)+".$KV."+shared.BucketUnseal+".default.x")
	}
	// And each role can do its own job (the server answers, no violation).
	// Nobody writes key stores, keys or tenants directly: authn does, on
	// their signed request.
	for _, user := range personUsers() {
		for _, b := range []string{shared.BucketKeystores, shared.BucketXKSKeys, shared.BucketTenants} {
			m.refusedPub(t, user, "write the registry directly", shared.SubjectKVPrefix+b+".x")
		}
	}
	for user, allowed := range map[string]string{
		alice: registry, sam: kill, carol: share,
	} {
		errs := make(chan error, 4)
		nc, _ := m.connect(t, user, errs)
		if err := nc.Publish(allowed, []byte("{}")); err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-errs:
			t.Fatalf("%s refused its own job %s: %v", user, allowed, err)
		default:
		}
	}
	nc, _ := m.connect(t, audrey, nil)
	if _, err := nc.Request(shared.JSStreamInfo+shared.StreamAuditLog, nil, nats.DefaultTimeout); err != nil {
		t.Fatalf("auditor cannot look up the audit log: %v", err)
	}
}
