//! openraft's storage conformance suite against the sled store.

use openraft::testing::log::{StoreBuilder, Suite};
use tandem_storage::{LogStore, StateMachineStore, TypeConfig};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), openraft::StorageError<TypeConfig>>
    {
        let dir = tempfile::tempdir().expect("a temp dir can be created");
        let store = tandem_storage::open(dir.path(), 4 * 1024 * 1024).expect("a fresh store opens");
        Ok((dir, store.log, store.sm))
    }
}

// The suite sleeps 8 s in total; paused time skips them.
#[tokio::test(start_paused = true)]
async fn openraft_conformance_suite() {
    Suite::test_all(Builder)
        .await
        .expect("the storage passes openraft's suite");
}
