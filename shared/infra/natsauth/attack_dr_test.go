package natsauth_test

import (
	"testing"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
)

// TestAttackBackupRestoreCredentials: the short-lived identities of
// `sovkeys backup` and `sovkeys restore` copy and restore streams and do
// nothing else: no delete, purge or KV write, no snapshot of the plaintext
// queues or unseal shares, no work, no reading another's inbox.
func TestAttackBackupRestoreCredentials(t *testing.T) {
	t.Parallel()
	m := startMesh(t)
	for user, perms := range map[string]natsauth.Permissions{
		shared.UserBackup: natsauth.BackupPermissions([]string{pool}), shared.UserRestore: natsauth.RestorePermissions(),
	} {
		if err := m.trust.WriteUserCreds(m.creds(user), user, perms); err != nil {
			t.Fatal(err)
		}
	}
	for _, user := range []string{shared.UserBackup, shared.UserRestore} {
		for _, s := range []string{shared.StreamAuditLog, shared.KVStream(shared.BucketKeystores), shared.ObjectStream(shared.BucketEKTObjects)} {
			for _, api := range []string{shared.JSStreamDelete, shared.JSStreamPurge, shared.JSStreamMsgDelete, shared.JSStreamCreate, shared.JSStreamUpdate} {
				m.refusedPub(t, user, "administer streams", api+s)
			}
		}
		m.refusedPub(t, user, "write KV", shared.SubjectKVPrefix+shared.BucketKeystores+".x")
		m.refusedPub(t, user, "queue HSM work", shared.WorkSubject(pool, shared.APIXKSEncrypt))
		m.refusedPub(t, user, "read a queue", shared.JSConsumerCreate+shared.WorkStream(pool)+".steal")
		m.refusedPub(t, user, "read key stores", shared.JSDirectGet+shared.KVStream(shared.BucketKeystores))
		m.refusedSub(t, user, "_INBOX_authn.>")
	}
	for _, s := range []string{shared.StreamRequests, shared.SiblingStream(shared.StreamRequests, 1), shared.WorkStream(pool),
		shared.SiblingStream(shared.WorkStream(pool), 2), shared.KVStream(shared.BucketUnseal)} {
		m.refusedPub(t, shared.UserBackup, "snapshot a plaintext queue", shared.JSStreamSnapshot+s)
	}
	m.refusedPub(t, shared.UserBackup, "restore a stream", shared.JSStreamRestore+shared.StreamAuditLog)
	m.refusedPub(t, shared.UserRestore, "snapshot a stream", shared.JSStreamSnapshot+shared.StreamAuditLog)
	m.refusedPub(t, shared.UserRestore, "write the audit log", shared.SubjectAuditRecordPrefix+"xks.x")
}
