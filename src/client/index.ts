/**
 * `duplexwire/client`: the client alone, without the server or anything Node-only.
 */
import './node-default.ts';
export * from './public-api.ts';
