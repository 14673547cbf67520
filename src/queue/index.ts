// SPDX-License-Identifier: MIT
// queue: the on-disk format and the state transitions (tmp → incoming → active → deferred/hold/corrupt),
// crash recovery and reads for the CLI. A library: used by cleanup, qmgr and cli; starts nothing itself.

export { QueueStore, readQueueFile, readHeaderSection, readFully, appendRecordsSync, MESSAGE_STATES, fsyncDirSync, type MessageState, type QueueEntry } from './store.ts';
export type { QueueWriter } from './writer.ts';
export { createIdGenerator, idTime, QUEUE_ID } from './id.ts';
export { CorruptQueueFile, recipientRecords, type QueueEnvelope, type StateRecord, type RecipientState, type ParsedQueueFile } from './format.ts';
