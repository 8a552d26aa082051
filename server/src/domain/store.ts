import { randomUUID } from 'node:crypto';
import type { Db } from '../db/connection.js';
import type { Writer } from '../db/writer.js';

/** What every domain function needs: a read connection, the single writer, and the server secret. */
export interface Store {
  reader: Db;
  writer: Writer;
  secret: string;
  now(): string;
}

export const newId = (): string => randomUUID();

export interface Page {
  limit: number;
  offset: number;
}

export const sqlBool = (v: boolean): number => (v ? 1 : 0);
