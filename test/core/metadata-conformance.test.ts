// The namespaced wrappers (src/core/metadata) run the same conformance
// suites as the backends they wrap. Each store sits in a namespace next to
// another namespace holding data of its own, so leaks across namespaces
// would show up as extra walk results or statuses.
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { LocalContentStore } from '../../src/core/content/store.ts';
import { NamespacedContentStore } from '../../src/core/metadata/content.ts';
import { MetadataDB } from '../../src/core/metadata/db.ts';
import { NamespaceStore } from '../../src/core/metadata/namespaces.ts';
import { NamespacedSnapshotter } from '../../src/core/metadata/snapshots.ts';
import { unmountAll } from '../../src/core/mount/mount.ts';
import { createSnapshotter } from '../../src/core/snapshots/index.ts';
import { runContentStoreConformance } from './content-conformance.ts';
import { runSnapshotterConformance } from './snapshotter-conformance.ts';

runContentStoreConformance('namespaced', async () => {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-mdconf-'));
  const db = new MetadataDB(root);
  const namespaces = new NamespaceStore(db);
  namespaces.create('conformance');
  namespaces.create('neighbour');
  const local = new LocalContentStore(path.join(root, 'content'));
  // The neighbour holds a committed blob and an open ingest the suite must not see.
  const neighbour = new NamespacedContentStore({ db, namespace: 'neighbour', backend: local });
  const w = await neighbour.writer({ ref: 'neighbour-ref' });
  await w.write(new TextEncoder().encode('neighbour data'));
  await w.close();
  const w2 = await neighbour.writer({ ref: 'neighbour-blob' });
  await w2.write(new TextEncoder().encode('neighbour blob'));
  await w2.commit();
  return {
    store: new NamespacedContentStore({ db, namespace: 'conformance', backend: local }),
    async cleanup() {
      db.close();
      await fs.rm(root, { recursive: true, force: true });
    },
  };
});

// The namespaced snapshotter over both drivers, in a namespace next to
// another one that holds snapshots under the same keys.
for (const driver of ['overlayfs', 'native'] as const) {
  runSnapshotterConformance(
    `namespaced ${driver}`,
    async () => {
      const root = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-mdsnap-'));
      const db = new MetadataDB(root);
      const namespaces = new NamespaceStore(db);
      namespaces.create('conformance');
      namespaces.create('neighbour');
      const backend = await createSnapshotter(driver, path.join(root, 'snapshots', driver));
      const neighbour = new NamespacedSnapshotter({ db, namespace: 'neighbour', backend });
      await neighbour.prepare('base-active');
      await neighbour.commit('base', 'base-active', { labels: { team: 'x' } });
      await neighbour.prepare('a1', 'base');
      return {
        sn: new NamespacedSnapshotter({ db, namespace: 'conformance', backend }),
        async cleanup() {
          await backend.close();
          db.close();
          await unmountAll(root);
          await fs.rm(root, { recursive: true, force: true });
        },
      };
    },
    { chainDepth: 60 },
  );
}
